"""The coloured-shapes data set of the project's origin (torch-free, numpy + Pillow).

Red, green and blue triangles, circles and rectangles of random size, position and rotation on a
plain light background. A class is a colour x shape pair (nine classes); ``by="colour"`` gives the
three-class colour task and ``by="shape"`` the three-class shape task.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220)}
SHAPES = ("triangle", "circle", "rectangle")
GROUPINGS = ("class", "colour", "shape")


def class_name(colour: str, shape: str, by: str) -> str:
    return {"class": f"{colour}_{shape}", "colour": colour, "shape": shape}[by]


def render_shape(rng: np.random.Generator, colour: str, shape: str, size: int = 64) -> Image.Image:
    """One image: a shape of the given colour with random size, position and rotation."""
    background = tuple(int(v) for v in rng.integers(225, 256, size=3))
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    jitter = rng.integers(-25, 26, size=3)
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter, strict=True))
    radius = rng.uniform(0.16, 0.36) * size
    cx, cy = (rng.uniform(radius + 1, size - radius - 1) for _ in range(2))
    angle = rng.uniform(0, 2 * math.pi)
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        if shape == "triangle":
            corners = [(radius, angle + k * 2 * math.pi / 3) for k in range(3)]
        else:  # rectangle: random aspect, corners on the circumscribed circle
            half_diag = rng.uniform(0.35, 0.65) * math.pi / 2
            corners = [(radius, angle + a) for a in
                       (half_diag, math.pi - half_diag, math.pi + half_diag, -half_diag)]
        draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in corners], fill=fill)
    return img


def generate_shapes(out_dir: str | Path, per_class: int, by: str = "class", size: int = 64,
                    seed: int = 0, progress=None) -> dict:
    """Write ``per_class`` PNGs for each colour x shape pair under ``out_dir/<class>/``.

    With ``by="colour"`` (or ``"shape"``) the nine pairs are pooled into three classes, each with
    ``per_class`` images per pair. Returns a summary: classes and image counts.
    """
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {GROUPINGS}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    jobs = [(c, s, i) for c in COLOURS for s in SHAPES for i in range(per_class)]
    for colour, shape, i in (progress(jobs) if progress else jobs):
        name = class_name(colour, shape, by)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        render_shape(rng, colour, shape, size).save(folder / f"{colour}_{shape}_{i:05d}.png")
        counts[name] = counts.get(name, 0) + 1
    return {"out": str(out), "by": by, "classes": len(counts), "images": sum(counts.values()),
            "per_class": counts}
