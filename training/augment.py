"""Training-time augmentation on preprocessed tensors (never at evaluation).

Random affine distortions as in Koch et al. (2015): small rotation, shear, scale and translation,
applied to a whole batch at once with ``affine_grid`` / ``grid_sample``. They act on the output of
the shared preprocessing, so the preprocessing itself stays exactly what serving uses. Pixels
brought in from outside the image repeat the border (the background, for centred objects).

``quarter_turn_classes`` is the other augmentation of few-shot work (Santoro et al. 2016, Vinyals
et al. 2016): a character turned by 90, 180 or 270 degrees counts as a new class, quadrupling the
training classes. It suits data whose classes are not rotation invariant (handwriting), not
data where rotation is part of the class's variation (the shapes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.config import AugmentConfig

__all__ = ["AugmentConfig", "affine_matrices", "quarter_turn_classes", "random_affine",
           "variant_classes"]


def affine_matrices(n: int, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """``[n, 2, 3]`` random affine matrices (identity for images left undistorted)."""
    def uniform(bound: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * bound

    angle = uniform(math.radians(cfg.rotate_deg))
    shear = torch.tan(uniform(math.radians(cfg.shear_deg)))
    scale = 1 + uniform(cfg.scale)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # rotation @ shear @ scale, written out; translation in normalised coordinates (side = 2).
    a = torch.stack([torch.stack([cos * scale, (cos * shear - sin) * scale], 1),
                     torch.stack([sin * scale, (sin * shear + cos) * scale], 1)], 1)
    t = torch.stack([uniform(2 * cfg.translate), uniform(2 * cfg.translate)], 1)
    theta = torch.cat([a, t[:, :, None]], dim=2)
    keep = torch.rand(n, generator=generator) >= cfg.p
    theta[keep] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    return theta


def random_affine(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
                  ) -> torch.Tensor:
    """Distort each image of ``[N, C, H, W]`` with its own random affine transform."""
    if not cfg.active or len(x) == 0:
        return x
    theta = affine_matrices(len(x), cfg, generator).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def quarter_turn_classes(x: torch.Tensor, labels: torch.Tensor, turns: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn image i by ``turns[i]`` quarter turns; its class becomes ``4 * label + turns``."""
    out = x.clone()
    for k in (1, 2, 3):
        chosen = turns == k
        if chosen.any():
            out[chosen] = torch.rot90(x[chosen], k, dims=(2, 3))
    return out, labels * 4 + turns


def variant_classes(x: torch.Tensor, labels: torch.Tensor, variant: torch.Tensor,
                    turns: int, mirror: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Variant ``v`` of image i: turned ``v % turns`` quarter turns, then mirrored (left-right)
    when ``v // turns`` is 1; its class becomes ``variants * label + v`` (``variants`` =
    ``turns * (2 if mirror else 1)``). A mirrored character, like a turned one, is another
    character in most scripts: more classes to learn from for the same images."""
    out = quarter_turn_classes(x, labels, variant % turns)[0] if turns == 4 else x.clone()
    if mirror:
        flipped = variant // turns == 1
        if flipped.any():
            out[flipped] = torch.flip(out[flipped], dims=(3,))
    variants = turns * (2 if mirror else 1)
    return out, labels * variants + variant
