"""Configuration (layer 4): config loading and validation, size checks against the
data, the workdir's resume rules and lock."""
