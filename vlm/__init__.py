"""vlm domain package (see README)."""
