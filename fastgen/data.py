"""Image datasets for fastgen's generative models: built-in toy sets and users' own image folders.

Every dataset here is a :class:`torch.utils.data.Dataset` of ``(image, label)`` pairs:

* ``image``: float ``[C, S, S]`` in [-1, 1] (square images, ``C`` = 1 or 3);
* ``label``: an int64 0-d tensor, the class index, or ``-1`` for an unlabelled dataset (always a
  pair, so PyTorch's default collate builds ``([B, C, S, S], [B])`` batches).

and carries ``channels``, ``image_size``, ``labels`` (int64 ``[N]`` or None), ``num_classes`` and
``class_names`` (None when unlabelled).

What there is:

* :func:`make_shapes` / :func:`shapes_dataset`: procedural RGB discs, squares, rings and diagonal
  stripes (4 classes) drawn with torch from a seed, at any size; no downloads, no files;
* :func:`digits_dataset`: scikit-learn's 1797 handwritten 8x8 digits (10 classes), resized;
* :class:`ImageFolder`: a folder of image files read with Pillow, labelled by class subfolders;
* :class:`TensorImageDataset`: any in-memory image tensor (and labels);
* :func:`load_dataset`: picks one of those from a name or a path.

Image-to-image translation (pix2pix, CycleGAN) uses two domains A and B. :class:`PairedDataset`
(aligned pairs) and :class:`UnpairedDataset` (two unaligned sets) return ``(cat([a, b]), -1)`` —
the A and B images stacked along channels, so batches flow through the trainers' ordinary
``(image, label)`` path; the recipes split them (``channels_a`` channels first). Built in:
:func:`shapes_edges_dataset` (paired: the shapes' edge maps -> their filled silhouettes) and :func:`shapes_inverted_dataset` (unpaired: shapes <-> colour-inverted shapes from
another draw); :func:`load_translation_dataset` also reads folders.
"""
from __future__ import annotations

import math
import os
from numbers import Integral
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

__all__ = [
    "DATASET_SEED", "SHAPE_CLASSES", "IMAGE_EXTENSIONS", "make_shapes", "shapes_dataset", "digits_dataset",
    "TensorImageDataset", "ImageFolder", "load_dataset", "PairedDataset", "UnpairedDataset", "edge_map",
    "shapes_edges_dataset", "shapes_inverted_dataset", "load_translation_dataset",
]

DATASET_SEED = 20240607
SHAPE_CLASSES = ("disc", "square", "ring", "stripes")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_BLOCK = 1 << 20  # make_shapes draws at most this many pixels (per channel) at a time

# Saturated colours in [-1, 1]: red, green, blue, yellow, cyan, magenta, white, black.
_PALETTE = torch.tensor(
    [[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1], [-1, 1, 1], [1, -1, 1], [1, 1, 1], [-1, -1, -1]],
    dtype=torch.float32,
)


def _check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int if it is an integer (not a bool) ``>= minimum``, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _label(labels: Optional[torch.Tensor], index: int) -> torch.Tensor:
    """The int64 0-d label of item ``index``, or ``tensor(-1)`` for an unlabelled dataset."""
    return labels[index] if labels is not None else torch.tensor(-1)


# ----------------------------------------------------------------------------- procedural shapes
def _signed_distance(kind: str, p: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    """Signed distances (negative inside), float32 ``[n, S, S]``, to ``n`` shapes of one ``kind``.

    ``p`` is float64 ``[8, n, 1, 1]``: per image its 6 uniform draws and the cosine and sine of its
    rotation. Each shape parameter is computed in float64 and rounded to float32 once, as Python
    floats meeting float32 tensors are, so a batch gives the same pixels as one image at a time.
    """
    f32 = torch.Tensor.float
    dx, dy = xx - f32((p[0] - 0.5) * 0.8), yy - f32((p[1] - 0.5) * 0.8)  # centre in [-0.4, 0.4)
    if kind == "disc":
        return torch.sqrt(dx * dx + dy * dy) - f32(0.25 + 0.3 * p[2])
    if kind == "square":  # rotated by up to 90 degrees
        c, s = f32(p[6]), f32(p[7])
        rx, ry = c * dx + s * dy, -s * dx + c * dy
        return torch.maximum(rx.abs(), ry.abs()) - f32(0.2 + 0.25 * p[2])
    if kind == "ring":
        return (torch.sqrt(dx * dx + dy * dy) - f32(0.3 + 0.25 * p[2])).abs() - f32(0.08 + 0.07 * p[4])
    # diagonal stripes, either diagonal, random period and phase (the centre is not used)
    direction = torch.where(p[3] < 0.5, 1.0, -1.0).float()
    period = f32(0.35 + 0.3 * p[2])
    s = ((xx + direction * yy) / math.sqrt(2.0)) / period + f32(p[5])
    return ((s - torch.floor(s) - 0.5).abs() - 0.25) * period


def make_shapes(size: int = 32, count: int = 64, seed: int = DATASET_SEED, return_masks: bool = False):
    """``count`` procedural RGB images, float32 ``[count, 3, size, size]`` in [-1, 1], and int64 classes ``[count]``.

    Image ``i`` is shape ``SHAPE_CLASSES[i % 4]`` (disc, square, ring or diagonal stripes; that is
    its label) with a random centre, extent, orientation and two different palette colours
    (foreground, and a muted background). Shapes are drawn with signed distance functions and a
    one-pixel anti-aliased edge in coordinates normalised to [-1, 1], so the same seed gives the
    same pictures at every ``size``; image ``i`` does not depend on ``count``.

    This is the embedded dataset of ``python -m fastgen demo`` (``fastgen.demo.make_dataset``).
    With ``return_masks`` also the shapes' coverage masks ``[count, 1, size, size]`` in [-1, 1]
    (the images are the same either way).

    Raises:
        ValueError: ``size`` < 4, ``count`` < 1 or ``seed`` < 0 (or not ints); the message names it.
    """
    size, count = _check_int("size", size, 4), _check_int("count", count)
    g = torch.Generator().manual_seed(_check_int("seed", seed, 0))
    n_colours = len(_PALETTE)
    draws, colours = [], []
    for _ in range(count):  # these draws, in this order, define the dataset: keep them
        u = torch.rand(6, generator=g).tolist()
        fg_i = int(torch.randint(0, n_colours, (1,), generator=g))
        bg_off = int(torch.randint(1, n_colours, (1,), generator=g))  # never the foreground colour
        draws.append(u + [math.cos(u[3] * math.pi / 2), math.sin(u[3] * math.pi / 2)])
        colours.append((fg_i, (fg_i + bg_off) % n_colours))
    params = torch.tensor(draws, dtype=torch.float64).T.reshape(8, count, 1, 1)
    fg_i, bg_i = torch.tensor(colours).T
    fg = _PALETTE[fg_i].view(count, 3, 1, 1)
    bg = _PALETTE[bg_i].view(count, 3, 1, 1) * 0.8  # a slightly muted background
    labels = torch.arange(count) % len(SHAPE_CLASSES)

    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    pixel = 2.0 / size
    images = torch.empty(count, 3, size, size)
    masks = torch.empty(count, 1, size, size) if return_masks else None
    for block in torch.arange(count).split(max(1, _BLOCK // (size * size))):  # bounded temporaries
        for k, kind in enumerate(SHAPE_CLASSES):
            idx = block[labels[block] == k]
            mask = (0.5 - _signed_distance(kind, params[:, idx], xx, yy) / pixel).clamp(0.0, 1.0).unsqueeze(1)
            images[idx] = bg[idx] * (1 - mask) + fg[idx] * mask
            if masks is not None:
                masks[idx] = mask * 2 - 1
    return (images, labels, masks) if return_masks else (images, labels)


# ----------------------------------------------------------------------------- in-memory tensors
class TensorImageDataset(Dataset):
    """Images held in memory: ``images`` float ``[N, C, S, S]`` in [-1, 1], optional int64 ``labels`` ``[N]``.

    ``num_classes`` defaults to ``len(class_names)`` if names are given, else ``max(labels) + 1``;
    labels must lie in ``[0, num_classes)``. Without labels, items are ``(image, tensor(-1))`` and
    ``num_classes`` / ``class_names`` are None.

    Raises:
        TypeError: ``images`` or ``labels`` is not a tensor.
        ValueError: a bad shape, dtype, value range or length; the message names the argument.
    """

    def __init__(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None, *,
                 num_classes: Optional[int] = None, class_names: Optional[Sequence[str]] = None):
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[2] != images.shape[3] or images.shape[0] == 0:
            raise ValueError(f"images must have shape [N >= 1, C, S, S] (square), got {list(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be a floating-point tensor, got {images.dtype}")
        lo, hi = images.min().item(), images.max().item()
        if not (lo >= -1.0 and hi <= 1.0):  # also rejects NaN
            raise ValueError(f"images must lie in [-1, 1], got values in [{lo}, {hi}]")
        class_names = tuple(class_names) if class_names is not None else None
        if labels is None:
            if num_classes is not None or class_names is not None:
                raise ValueError("num_classes and class_names need labels")
        else:
            labels = self._check_labels(labels, len(images))
            if class_names is not None and num_classes is not None and num_classes != len(class_names):
                raise ValueError(f"num_classes ({num_classes}) must equal len(class_names) ({len(class_names)})")
            if num_classes is None:
                num_classes = len(class_names) if class_names is not None else int(labels.max()) + 1
            num_classes = _check_int("num_classes", num_classes)
            if int(labels.max()) >= num_classes:
                raise ValueError(f"labels must be < num_classes ({num_classes}), got {int(labels.max())}")
        self.images, self.labels = images, labels
        self.num_classes, self.class_names = num_classes, class_names
        self.channels, self.image_size = images.shape[1], images.shape[2]

    @staticmethod
    def _check_labels(labels, n: int) -> torch.Tensor:
        """``labels`` as int64 ``[n]`` with values >= 0, or a TypeError / ValueError naming ``labels``."""
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor or None, got {type(labels).__name__}")
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape [{n}] (one per image), got {list(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
        labels = labels.to(torch.int64)
        if int(labels.min()) < 0:
            raise ValueError(f"labels must be >= 0, got {int(labels.min())}")
        return labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image [C, S, S], label)``; the label is an int64 0-d tensor, -1 when unlabelled."""
        return self.images[index], _label(self.labels, index)


def shapes_dataset(size: int = 32, count: int = 4096, seed: int = DATASET_SEED) -> TensorImageDataset:
    """:func:`make_shapes` as a labelled dataset: 4 classes named by :data:`SHAPE_CLASSES`, 3 channels."""
    images, labels = make_shapes(size, count, seed)
    return TensorImageDataset(images, labels, class_names=SHAPE_CLASSES)


def digits_dataset(size: int = 16) -> TensorImageDataset:
    """scikit-learn's handwritten digits: 1797 grayscale images ``[1, size, size]`` in [-1, 1], classes 0-9.

    The 8x8 originals (values 0..16) are scaled to [-1, 1] and, for ``size != 8``, resized with
    antialiased bilinear interpolation. The data ships with scikit-learn (no download).

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: ``size`` is not an int >= 1.
    """
    size = _check_int("size", size)
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("digits_dataset needs scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    images = (torch.as_tensor(digits.images, dtype=torch.float32) / 8.0 - 1.0).unsqueeze(1)
    if size != images.shape[-1]:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                                 align_corners=False, antialias=True).clamp_(-1.0, 1.0)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    return TensorImageDataset(images, labels, class_names=tuple(str(d) for d in range(10)))


# ----------------------------------------------------------------------------- image files
class ImageFolder(Dataset):
    """Image files under ``root`` (searched recursively), read with Pillow, as ``[channels, size, size]`` in [-1, 1].

    Files with an extension in :data:`IMAGE_EXTENSIONS` (any case) are used, in sorted path order.
    If every image sits inside a subfolder of ``root`` (``root/<class>/...``), the subfolder
    names, sorted, are the classes and an image's label is its subfolder's index; if any image
    sits directly in ``root`` the dataset is unlabelled (label -1, ``num_classes`` None).

    Each image is converted to RGB (``channels=3``) or grayscale (``channels=1``; any alpha is
    dropped), resized with bicubic filtering so its shorter side is ``size``, and centre-cropped to
    ``size`` x ``size``. Images are decoded on access; ``cache=True`` keeps the decoded tensors (per
    process: each DataLoader worker has its own cache).

    Attributes: ``root``, ``paths``, ``labels`` (int64 ``[N]`` or None), ``class_names``,
    ``num_classes``, ``channels``, ``image_size``.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a folder.
        ValueError: no images under ``root``, or a bad ``size`` / ``channels``; on access, a file
            Pillow cannot read (the message names the file).
        ImportError: Pillow is not installed.
    """

    def __init__(self, root: Union[str, os.PathLike], size: int, channels: int = 3, cache: bool = False):
        self.image_size = _check_int("size", size)
        if isinstance(channels, bool) or channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        try:
            from PIL import Image
        except ImportError as exc:
            raise ImportError("ImageFolder needs Pillow: pip install pillow") from exc
        self._image = Image
        self.root = Path(root)
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise FileNotFoundError(f"root: {str(self.root)!r} {what}")
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.paths:
            raise ValueError(f"root: no images ({', '.join(IMAGE_EXTENSIONS)}) found in {str(self.root)!r}")
        parts = [p.relative_to(self.root).parts for p in self.paths]
        if all(len(q) > 1 for q in parts):  # every image inside a class subfolder
            self.class_names = tuple(sorted({q[0] for q in parts}))
            index = {name: k for k, name in enumerate(self.class_names)}
            self.labels = torch.tensor([index[q[0]] for q in parts], dtype=torch.int64)
            self.num_classes = len(self.class_names)
        else:
            self.labels, self.class_names, self.num_classes = None, None, None
        self.channels = channels
        self._cache = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, path: Path) -> torch.Tensor:
        """One image file as float32 ``[channels, size, size]`` in [-1, 1] (ValueError naming it if unreadable)."""
        Image, size = self._image, self.image_size
        try:
            with Image.open(path) as img:
                img = img.convert("RGB" if self.channels == 3 else "L")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(f"cannot read image {str(path)!r}: {exc}") from exc
        w, h = img.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        return pixels.view(size, size, self.channels).permute(2, 0, 1).float().div_(127.5).sub_(1.0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image [C, S, S], label)``; the label is an int64 0-d tensor, -1 when unlabelled."""
        index = range(len(self.paths))[index]  # negative indices; IndexError when out of range
        if self._cache is None:
            image = self.load(self.paths[index])
        else:
            image = self._cache.get(index)
            if image is None:
                image = self._cache[index] = self.load(self.paths[index])
        return image, _label(self.labels, index)


# ----------------------------------------------------------------------------- by name
def load_dataset(data: Union[str, os.PathLike] = "shapes", size: int = 32, *, channels: Optional[int] = None,
                 count: Optional[int] = None, seed: Optional[int] = None) -> Dataset:
    """A dataset by name: ``"shapes"`` (:func:`shapes_dataset`), ``"digits"`` (:func:`digits_dataset`),
    or a folder path (:class:`ImageFolder`, ``channels`` default 3).

    ``count`` (default 4096) and ``seed`` (default :data:`DATASET_SEED`) apply to ``"shapes"`` only;
    ``channels``, if given, must match the built-in sets (3 for shapes, 1 for digits).

    Raises:
        FileNotFoundError: ``data`` is neither a known name nor an existing folder.
        ValueError: a bad or inapplicable argument; the message names it.
    """
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(f"data must be 'shapes', 'digits' or a folder path, got {type(data).__name__}")
    builtin = {"shapes": 3, "digits": 1}.get(data) if isinstance(data, str) else None
    if builtin is not None and channels is not None and channels != builtin:
        raise ValueError(f"channels: the {data!r} dataset has {builtin} channel(s), got {channels!r}")
    if data != "shapes":
        for name, value in (("count", count), ("seed", seed)):
            if value is not None:
                raise ValueError(f"{name} only applies to data='shapes', got {name}={value!r} for data={data!r}")
    if data == "shapes":
        return shapes_dataset(size, 4096 if count is None else count, DATASET_SEED if seed is None else seed)
    if data == "digits":
        return digits_dataset(size)
    if not Path(data).is_dir():
        raise FileNotFoundError(f"data: {str(data)!r} is neither 'shapes', 'digits' nor an existing folder")
    return ImageFolder(data, size, 3 if channels is None else channels)


# ----------------------------------------------------------------------------- translation pairs
def _as_images(name: str, d) -> Dataset:
    if isinstance(d, torch.Tensor):
        return TensorImageDataset(d)
    if not hasattr(d, "__getitem__") or not hasattr(d, "__len__"):
        raise TypeError(f"{name} must be an image tensor [N, C, S, S] or a dataset, got {type(d).__name__}")
    if len(d) == 0:
        raise ValueError(f"{name} is empty")
    return d


def _image_of(item) -> torch.Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


class _TwoDomains(Dataset):
    def __init__(self, a, b):
        self.a, self.b = _as_images("a", a), _as_images("b", b)
        ia, ib = _image_of(self.a[0]), _image_of(self.b[0])
        if ia.shape[1:] != ib.shape[1:]:
            raise ValueError(f"a and b images must have the same size, got {tuple(ia.shape)} and {tuple(ib.shape)}")
        self.channels_a, self.channels_b = ia.shape[0], ib.shape[0]
        self.channels, self.image_size = self.channels_a + self.channels_b, ia.shape[-1]
        self.labels, self.num_classes, self.class_names = None, None, None

    def _pair(self, ia: int, ib: int):
        x = torch.cat([_image_of(self.a[ia]), _image_of(self.b[ib])], dim=0)
        return x, torch.tensor(-1)


class PairedDataset(_TwoDomains):
    """Aligned pairs: item i is ``(cat([a_i, b_i]), -1)``; ``a`` and ``b`` have the same length."""

    def __init__(self, a, b):
        super().__init__(a, b)
        if len(self.a) != len(self.b):
            raise ValueError(f"a and b must have the same length for paired data, got {len(self.a)} and {len(self.b)}")

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, index: int):
        index = range(len(self))[index]
        return self._pair(index, index)


class UnpairedDataset(_TwoDomains):
    """Two unaligned sets: item i is ``(cat([a_(i mod |a|), b_(p_i mod |b|)]), -1)`` with ``p`` a fixed
    seeded permutation, ``len = max(|a|, |b|)``; the trainers shuffle the items, so each batch pairs
    random a's with random b's."""

    def __init__(self, a, b, seed: int = DATASET_SEED):
        super().__init__(a, b)
        n = max(len(self.a), len(self.b))
        self._perm = torch.randperm(n, generator=torch.Generator().manual_seed(_check_int("seed", seed, 0)))

    def __len__(self) -> int:
        return len(self._perm)

    def __getitem__(self, index: int):
        index = range(len(self))[index]
        return self._pair(index % len(self.a), int(self._perm[index]) % len(self.b))


def edge_map(images: torch.Tensor) -> torch.Tensor:
    """A 1-channel edge map in [-1, 1] (edges bright on -1) of images ``[N, C, S, S]`` in [-1, 1]: the
    gradient magnitude of the luminance (central differences), scaled by its 99th percentile."""
    lum = images.mean(dim=1, keepdim=True)
    p = torch.nn.functional.pad(lum, [1, 1, 1, 1], mode="replicate")
    gx = p[..., 1:-1, 2:] - p[..., 1:-1, :-2]
    gy = p[..., 2:, 1:-1] - p[..., :-2, 1:-1]
    mag = (gx.square() + gy.square()).sqrt()
    scale = torch.quantile(mag.flatten(), 0.99).clamp_min(1e-6)
    return (mag / scale).clamp(0, 1) * 2 - 1


def shapes_edges_dataset(size: int = 32, count: int = 4096, seed: int = DATASET_SEED) -> PairedDataset:
    """Paired: A = the edge map of a shapes image (1 channel), B = its filled silhouette (1 channel,
    the shape's coverage in [-1, 1]): "fill the outline", a deterministic mapping (the colours are
    not in the edges, so an edges -> colour-image task would have no single answer)."""
    images, _, masks = make_shapes(size, count, seed, return_masks=True)
    return PairedDataset(edge_map(images), masks)


def shapes_inverted_dataset(size: int = 32, count: int = 4096, seed: int = DATASET_SEED) -> UnpairedDataset:
    """Unpaired: A = shapes images, B = colour-inverted shapes images of another draw (``-image``)."""
    a, _ = make_shapes(size, count, seed)
    b, _ = make_shapes(size, count, seed + 1)
    return UnpairedDataset(a, -b, seed=seed)


def _domain_folder(root: Path, names) -> Optional[Path]:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def load_translation_dataset(data: Union[str, os.PathLike] = "shapes-edges", size: int = 32, *,
                             paired: Optional[bool] = None, channels: int = 3) -> Dataset:
    """A two-domain dataset: ``"shapes-edges"`` (paired), ``"shapes-inverted"`` (unpaired), or a folder
    with ``A/`` and ``B/`` (or CycleGAN's ``trainA/`` / ``trainB/``) subfolders of images. A folder is
    paired when ``paired=True`` (the files of A and B are matched by sorted order, so name them alike)
    and unpaired otherwise.
    """
    if data == "shapes-edges":
        return shapes_edges_dataset(size)
    if data == "shapes-inverted":
        return shapes_inverted_dataset(size)
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"data: {str(data)!r} is neither 'shapes-edges', 'shapes-inverted' nor an existing "
                                "folder")
    fa, fb = _domain_folder(root, ("A", "trainA")), _domain_folder(root, ("B", "trainB"))
    if fa is None or fb is None:
        raise FileNotFoundError(f"data: {str(data)!r} needs subfolders A/ and B/ (or trainA/ and trainB/)")
    a, b = ImageFolder(fa, size, channels), ImageFolder(fb, size, channels)
    return PairedDataset(a, b) if paired else UnpairedDataset(a, b)
