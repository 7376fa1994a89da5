"""Image grids and PNG output (sample grids of the trainers, the demo's picture)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Union

import torch


def image_grid(images: torch.Tensor, upscale: int = 4, pad: int = 2, ncols: Optional[int] = None,
               background: float = 1.0) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` grid of ``[N, C, S, S']`` images in [-1, 1] (C = 1 or 3), each cell upscaled
    ``upscale`` times with nearest neighbour, ``pad`` background pixels between cells (background in
    [-1, 1]: 1 is white). One-channel images are shown grey."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be a tensor [N, 1 or 3, H, W], got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if images.shape[0] == 0:
        raise ValueError("images is empty")
    for name, v, lo in (("upscale", upscale, 1), ("pad", pad, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    n, _, h, w = images.shape
    ncols = min(ncols or math.ceil(math.sqrt(n)), n)
    nrows = math.ceil(n / ncols)
    imgs = images.detach().float().cpu().clamp(-1, 1).expand(n, 3, h, w)
    big = imgs.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
    ch, cw = h * upscale, w * upscale
    grid = torch.full((3, pad + nrows * (ch + pad), pad + ncols * (cw + pad)), float(background))
    for k in range(n):
        r, c = divmod(k, ncols)
        y, x = pad + r * (ch + pad), pad + c * (cw + pad)
        grid[:, y:y + ch, x:x + cw] = big[k]
    return ((grid + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


def save_png(pixels: torch.Tensor, path: Union[str, os.PathLike]) -> tuple[int, int]:
    """Write a uint8 ``[H, W, 3]`` tensor as a PNG (parent folders created); return (width, height).

    The file is written next to its destination and renamed over it, so a reader never sees half a
    PNG (trainers overwrite ``latest.png`` while users watch it)."""
    try:
        from PIL import Image
    except ImportError as exc:  # pillow is an optional dependency
        raise RuntimeError("writing PNGs needs Pillow: pip install pillow") from exc
    if not isinstance(pixels, torch.Tensor) or pixels.dtype != torch.uint8 or pixels.dim() != 3 or pixels.shape[2] != 3:
        raise ValueError("pixels must be a uint8 tensor [H, W, 3]")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(pixels.numpy())
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return img.size


def save_image_grid(images: torch.Tensor, path: Union[str, os.PathLike], **grid_kwargs) -> tuple[int, int]:
    """:func:`image_grid` of ``images`` written as a PNG at ``path``; returns (width, height)."""
    return save_png(image_grid(images, **grid_kwargs), path)
