"""logcontext."""
