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


# ----------------------------------------------------------------------------- drawing with Pillow
def pil_font(size: int):
    """Pillow's default font at ``size`` px (the fixed bitmap font on Pillow < 10.1)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def pil_to_pixels(img) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` tensor of an RGB PIL image (for :func:`save_png`)."""
    img = img.convert("RGB")
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.size[1], img.size[0], 3).clone()


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


_LINE_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def line_plot(curves: dict, *, title: str = "", xlabel: str = "", size: tuple = (480, 320), log_y: bool = False):
    """A PIL image of line curves ``{name: [(x, y), ...]}`` with axes, ticks and a legend (Pillow
    only, no matplotlib). Non-finite points are skipped; ``log_y`` plots log10(y) for positive y."""
    from PIL import Image, ImageDraw

    W, H = size
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font, small = pil_font(14), pil_font(11)
    left, right, top, bottom = 56, 12, 28, 40
    d.text((left, 6), title, fill="black", font=font)
    pts = {k: [(float(x), float(y)) for x, y in v if math.isfinite(x) and math.isfinite(y) and (y > 0 or not log_y)]
           for k, v in curves.items()}
    if log_y:
        pts = {k: [(x, math.log10(y)) for x, y in v] for k, v in pts.items()}
    allp = [p for v in pts.values() for p in v]
    x0, x1, y0, y1 = left, W - right, top, H - bottom
    d.rectangle([x0, y0, x1, y1], outline=(160, 160, 160))
    if not allp:
        d.text((x0 + 10, y0 + 10), "no data", fill="black", font=small)
        return img
    xs, ys = [p[0] for p in allp], [p[1] for p in allp]
    xmin, xmax = min(xs), max(xs)
    ymin, ymax = min(ys), max(ys)
    if xmax == xmin:
        xmax = xmin + 1
    if ymax == ymin:
        ymin, ymax = ymin - 0.5, ymax + 0.5
    pad = 0.05 * (ymax - ymin)
    ymin, ymax = ymin - pad, ymax + pad

    def px(x, y):
        return (x0 + (x - xmin) / (xmax - xmin) * (x1 - x0), y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))

    yticks = _nice_ticks(ymin, ymax)
    if log_y:  # at 1, 2, 5 x 10^k inside the range (or the linear ticks of log10 y if none)
        dec = [math.log10(m) + k for k in range(math.floor(ymin), math.ceil(ymax) + 1) for m in (1, 2, 5)]
        dec = [t for t in dec if ymin <= t <= ymax]
        yticks = dec if len(dec) >= 2 else yticks
    for t in yticks:
        _, yy = px(xmin, t)
        d.line([x0, yy, x1, yy], fill=(232, 232, 232))
        label = f"{10 ** t:.3g}" if log_y else f"{t:.3g}"
        d.text((x0 - 6 - d.textlength(label, font=small), yy - 6), label, fill="black", font=small)
    for t in _nice_ticks(xmin, xmax):
        xx, _ = px(t, ymin)
        d.line([xx, y1, xx, y1 + 4], fill="black")
        label = f"{t:g}"
        d.text((xx - d.textlength(label, font=small) / 2, y1 + 6), label, fill="black", font=small)
    if xlabel:
        d.text(((x0 + x1) / 2 - d.textlength(xlabel, font=small) / 2, H - 16), xlabel, fill=(80, 80, 80), font=small)
    ly = y0 + 6
    for i, (name, v) in enumerate(pts.items()):
        colour = _LINE_COLOURS[i % len(_LINE_COLOURS)]
        line = [px(x, y) for x, y in v]
        if len(line) > 1:
            d.line(line, fill=colour, width=2)
        elif line:
            d.ellipse([line[0][0] - 2, line[0][1] - 2, line[0][0] + 2, line[0][1] + 2], fill=colour)
        tw = d.textlength(name, font=small)
        d.line([x1 - tw - 30, ly + 6, x1 - tw - 12, ly + 6], fill=colour, width=2)
        d.text((x1 - tw - 8, ly), name, fill="black", font=small)
        ly += 14
    return img
