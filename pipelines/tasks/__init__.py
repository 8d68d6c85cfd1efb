"""LightningModules of the shared core (domain tasks live in their domain packages)."""

from pipelines.tasks.image_classifier import ImageClassifier

__all__ = ["ImageClassifier"]
