"""Tools: definitions, the registry, schema derivation and validation."""
