"""Synthetic shapes in the image-folder layout: the core's end-to-end smoke data (open_clip-style)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pipelines.data.image import write_image

SHAPES = ("circle", "square", "triangle", "cross")


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB image of `shape` in a random colour, place and scale over a noisy background."""
    image = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    colour = tuple(int(c) for c in rng.integers(120, 256, size=3))
    radius = int(rng.integers(size // 6, size // 3))
    cx, cy = (int(v) for v in rng.integers(radius, size - radius, size=2))
    if shape == "circle":
        cv2.circle(image, (cx, cy), radius, colour, -1)
    elif shape == "square":
        cv2.rectangle(image, (cx - radius, cy - radius), (cx + radius, cy + radius), colour, -1)
    elif shape == "triangle":
        pts = np.array([[cx, cy - radius], [cx - radius, cy + radius], [cx + radius, cy + radius]], np.int32)
        cv2.fillPoly(image, [pts], colour)
    elif shape == "cross":
        thick = max(radius // 3, 1)
        cv2.rectangle(image, (cx - radius, cy - thick), (cx + radius, cy + thick), colour, -1)
        cv2.rectangle(image, (cx - thick, cy - radius), (cx + thick, cy + radius), colour, -1)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
    return image


def write_shapes_dataset(out: str | Path, n_train: int = 400, n_val: int = 100, image_size: int = 32,
                         seed: int = 0) -> Path:
    """Write `out/{train,val}/<shape>/<i>.png`; the same seed gives byte-identical files."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    jobs = [(split, i) for split, n in (("train", n_train), ("val", n_val)) for i in range(n)]
    for split, i in tqdm(jobs, desc=f"shapes → {out}", unit="img", leave=False):
        shape = SHAPES[i % len(SHAPES)]
        write_image(out / split / shape / f"{i:05d}.png", draw_shape(shape, image_size, rng))
    return out
