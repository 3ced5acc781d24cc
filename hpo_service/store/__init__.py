"""The SQL store: the source of truth for searches, trials and optimizer state."""
