"""The node's certificates: keys and CSRs, getting them signed, and where they are kept."""
