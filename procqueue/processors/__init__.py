"""Job processors: one module per job family."""
