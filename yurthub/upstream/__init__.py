"""yurthub.upstream."""
