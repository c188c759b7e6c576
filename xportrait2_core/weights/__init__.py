"""Weight files: reading checkpoints, loading the networks, key conversions."""
