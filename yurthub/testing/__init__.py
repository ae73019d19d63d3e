"""yurthub.testing."""
