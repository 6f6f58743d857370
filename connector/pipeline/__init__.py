"""Pipeline layer: the engine that runs one source, validation, categories, policies and
reprocessing. Wires sources, mappings and the store; knows no vendor."""
