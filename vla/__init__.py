"""vla domain package (see README)."""
