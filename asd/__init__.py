"""asd domain package (see README)."""
