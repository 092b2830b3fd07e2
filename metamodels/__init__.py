"""metamodels."""
