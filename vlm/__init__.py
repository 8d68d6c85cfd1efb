"""Vision-language models and AR → block-diffusion conversion (NBDiff's recipe, BARD's merging)."""
