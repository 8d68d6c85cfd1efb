"""Shared core of the multimodal and embodied pipelines: CLI, data layer, model parts, run folders."""

__version__ = "0.1.0"
