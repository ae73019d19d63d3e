"""yurthub.certs."""
