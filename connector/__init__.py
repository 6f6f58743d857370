"""Invoice Connector: vendor billing APIs in, validated MediTrak import records out."""
