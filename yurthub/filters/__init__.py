"""yurthub.filters."""
