"""Images through OpenCV, and the class-per-folder image layout (`root/<class>/<file>.png`)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipelines.data.errors import DataError, require_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def load_image(path: str | Path, size: int | tuple[int, int] | None = None, grayscale: bool = False) -> np.ndarray:
    """Decode an image to uint8 RGB [H, W, 3] (or [H, W] when grayscale), optionally resized."""
    path = require_file(path, "image")
    flag = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
    image = cv2.imread(str(path), flag)
    if image is None:
        raise DataError(f"cannot decode image {path} (corrupt or not an image)")
    if not grayscale:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if size is not None:
        wh = (size, size) if isinstance(size, int) else (size[1], size[0])
        image = cv2.resize(image, wh, interpolation=cv2.INTER_AREA)
    return image


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 RGB (or grey) array; the format follows the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr):
        raise DataError(f"OpenCV cannot write image {path}")
    return path


def scan_image_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """List images under `root/<class>/`; classes are the sorted folder names (torchvision's layout)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"image folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(file)
                labels.append(label)
    if not paths:
        raise DataError(f"image folder {root} has class folders but no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths, labels, classes
