"""Schema files (applied in name order)."""
