"""Mapping layer: the pure kit vendor mappings are written with (money, dates, statuses, line
folding, the `SourceMapping` contract). No I/O, no clock, no logging."""
