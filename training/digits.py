"""scikit-learn's bundled handwritten digits (1,797 images, 8x8, ten classes) as an image folder.

A ready real data set that needs no download: ``twinstream datasets digits --out DIR``. Images
are written as greyscale PNGs, bright ink on black, upscaled (bilinear) to ``size`` pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(out_dir: str | Path, size: int = 32, progress=None) -> dict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = Path(out_dir)
    counts: dict[str, int] = {}
    items = list(enumerate(zip(digits.images, digits.target, strict=True)))
    for i, (image, target) in (progress(items) if progress else items):
        folder = out / str(int(target))
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels, mode="L")
        if size != img.width:
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        img.save(folder / f"digit{int(target)}_{i:04d}.png")
        counts[str(int(target))] = counts.get(str(int(target)), 0) + 1
    return {"out": str(out), "classes": len(counts), "images": sum(counts.values()),
            "per_class": counts}
