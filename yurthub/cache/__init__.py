"""yurthub.cache."""
