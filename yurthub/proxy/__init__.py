"""yurthub.proxy."""
