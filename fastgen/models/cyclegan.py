r"""CycleGAN (Zhu et al. 2017): the ResNet generator (Johnson et al. 2016's architecture) and the
history buffer of generated images (Shrivastava et al. 2017). The discriminator is pix2pix's
:class:`~fastgen.models.PatchGANDiscriminator` with ``in_channels=3`` (unconditional).

    G = ResnetGenerator(n_blocks=9)                # 256x256 images (6 blocks for 128x128)
    pool = ImagePool(50)
    fake = G(real_a)                               # (N, 3, H, W) in [-1, 1]
    d_in = pool.query(fake, generator=g)           # half the time an older fake (detached)

ResnetGenerator, in the paper's notation: c7s1-64, d128, d256, R256 x n_blocks, u128, u64, c7s1-3:
``c7s1-k`` a 7x7 stride-1 conv (reflection padding) - norm - ReLU with k filters, ``dk`` a 3x3
stride-2 conv - norm - ReLU, ``Rk`` a residual block of two 3x3 convs (reflection padding; norm -
ReLU after the first, norm after the second), ``uk`` a 3x3 fractionally-strided (stride 1/2)
conv - norm - ReLU; the last c7s1 has no norm and ends in Tanh (its bias and the Tanh are one fused
op). ``base_channels`` scales the widths (64 above). H and W must be multiples of 4.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from . import _gan as U


class ResnetBlock(nn.Module):
    """``x + norm(conv(relu(norm(conv(x)))))`` with 3x3 reflection-padded convs (CycleGAN's R_k)."""

    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.conv1 = U.ConvNormAct(channels, channels, 3, 1, 1, norm=norm, act="relu", padding_mode="reflect")
        self.conv2 = U.ConvNormAct(channels, channels, 3, 1, 1, norm=norm, act="linear", padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class ResnetGenerator(nn.Module):
    """CycleGAN's generator ``G(x) -> (N, out_channels, H, W)`` in [-1, 1] (see the module docstring).

    Args:
        in_channels, out_channels: image channels in and out.
        base_channels: width of the first and last layers (the residual blocks have 4x).
        n_blocks: residual blocks: 6 for 128x128 images, 9 for 256x256 and larger (the paper).
        norm: ``"instance"`` (the paper), ``"batch"`` or ``"none"``. The instance norm has a learned
            per-channel affine starting at the identity (the fused GroupNorm op).
        init: ``"dcgan"`` (N(0, 0.02), the reference code's default) or ``"default"``.
    """

    def __init__(self, *, in_channels: int = 3, out_channels: int = 3, base_channels: int = 64, n_blocks: int = 9,
                 norm: str = "instance", init: str = "dcgan"):
        super().__init__()
        o = "ResnetGenerator"
        U.check_int(o, "in_channels", in_channels)
        U.check_int(o, "out_channels", out_channels)
        U.check_int(o, "base_channels", base_channels)
        U.check_int(o, "n_blocks", n_blocks)
        U.check_choice(o, "norm", norm, ("instance", "batch", "none"))
        U.check_choice(o, "init", init, U.INITS)
        self.config = dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
                           n_blocks=n_blocks, norm=norm, init=init)
        self.in_channels, self.out_channels = in_channels, out_channels
        c = base_channels
        self.stem = U.ConvNormAct(in_channels, c, 7, 1, 3, norm=norm, act="relu", padding_mode="reflect")
        self.down = nn.Sequential(U.ConvNormAct(c, 2 * c, 3, 2, 1, norm=norm, act="relu"),
                                  U.ConvNormAct(2 * c, 4 * c, 3, 2, 1, norm=norm, act="relu"))
        self.blocks = nn.Sequential(*(ResnetBlock(4 * c, norm) for _ in range(n_blocks)))
        self.up = nn.Sequential(
            U.ConvNormAct(4 * c, 2 * c, 3, 2, 1, output_padding=1, transposed=True, norm=norm, act="relu"),
            U.ConvNormAct(2 * c, c, 3, 2, 1, output_padding=1, transposed=True, norm=norm, act="relu"))
        self.head = U.ConvNormAct(c, out_channels, 7, 1, 3, norm="none", act="tanh", padding_mode="reflect")
        U.init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(N, in_channels, H, W)``, H and W multiples of 4 (and > 3: reflection padding of 3 at full
        resolution). Returns ``(N, out_channels, H, W)``."""
        U.check_images("ResnetGenerator", "x", x, self.in_channels, multiple=4)
        return self.head(self.up(self.blocks(self.down(self.stem(x)))))


class ImagePool:
    """CycleGAN's history of generated images (Shrivastava et al. 2017): the discriminator is updated
    on a mix of the newest fakes and older ones, which damps oscillation.

    :meth:`query` takes a batch of images and returns a batch of the same shape. While the pool holds
    fewer than ``size`` images, each new image is stored and returned. Once full, each image is, with
    probability 1/2, swapped with a uniformly chosen stored image (the stored one is returned, the new
    one takes its place), else returned as is. ``size=0`` disables the pool (the input comes back).
    Returned images are detached (they feed the discriminator's update).

    The draws come from ``generator`` (a ``torch.Generator``; the global RNG if None), so a run is
    reproducible; draws are made on the generator's device, so a CPU generator avoids device syncs
    for CUDA images. :meth:`state_dict` / :meth:`load_state_dict` hold the stored images as tensors
    (safetensors-friendly), so a checkpoint can resume the pool exactly.
    """

    def __init__(self, size: int = 50):
        self.size = U.check_int("ImagePool", "size", size, 0)
        self.config = dict(size=size)
        self._images: Optional[torch.Tensor] = None  # (size, C, H, W), filled up to self._count
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def images(self) -> Optional[torch.Tensor]:
        """The stored images ``(len(self), C, H, W)`` (a view), or None before the first query."""
        return None if self._images is None else self._images[:self._count]

    @torch.no_grad()
    def query(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """images ``(N, C, H, W)`` -> ``(N, C, H, W)``: each either the new image or a stored one (see the
        class docstring). Every call draws N uniforms and N indices, full pool or not."""
        o = "ImagePool"
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f"{o}: images must be a (N, C, H, W) tensor, got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        images = images.detach()
        if self.size == 0:
            return images
        if self._images is None:
            self._images = images.new_empty((self.size,) + tuple(images.shape[1:]))
        elif self._images.shape[1:] != images.shape[1:] or self._images.dtype != images.dtype or \
                self._images.device != images.device:
            raise ValueError(f"{o}: images are {tuple(images.shape[1:])} {images.dtype} on {images.device} but the "
                             f"pool holds {tuple(self._images.shape[1:])} {self._images.dtype} on "
                             f"{self._images.device}")
        n = images.shape[0]
        dev = generator.device if generator is not None else torch.device("cpu")
        swap = (torch.rand(n, generator=generator, device=dev) < 0.5).tolist()
        slot = torch.randint(self.size, (n,), generator=generator, device=dev).tolist()
        out = images
        for i in range(n):
            if self._count < self.size:
                self._images[self._count].copy_(images[i])
                self._count += 1
            elif swap[i]:
                j = slot[i]
                if out is images:
                    out = images.clone()
                out[i].copy_(self._images[j])
                self._images[j].copy_(images[i])
        return out

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """``{"size": int64 scalar, "images": (len, C, H, W)}`` (images: an empty ``(0,)`` tensor before the
        first query). Copies, so the pool can go on changing."""
        images = torch.zeros(0) if self._images is None else self._images[:self._count].clone()
        return {"size": torch.tensor(self.size, dtype=torch.int64), "images": images}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` (the pool's size must match; the images keep their dtype and device)."""
        o = "ImagePool"
        if not isinstance(state, dict) or set(state) != {"size", "images"}:
            raise ValueError(f"{o}: state must be a dict with keys 'size' and 'images', got "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        size, images = int(state["size"]), state["images"]
        if size != self.size:
            raise ValueError(f"{o}: the state is of a pool of size {size}, this pool has size {self.size}")
        if images.dim() == 1 and images.numel() == 0:
            self._images, self._count = None, 0
            return
        if images.dim() != 4 or images.shape[0] > self.size:
            raise ValueError(f"{o}: state['images'] must be (n <= {self.size}, C, H, W), got {tuple(images.shape)}")
        self._images = images.new_empty((self.size,) + tuple(images.shape[1:]))
        self._images[:images.shape[0]].copy_(images)
        self._count = images.shape[0]

    def __repr__(self) -> str:
        return f"ImagePool(size={self.size}, stored={self._count})"
