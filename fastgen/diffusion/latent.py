r"""Latent diffusion (Rombach et al. 2022): a frozen autoencoder + a diffusion model in its latent space.

    vae = VAE.from_preset("shapes32")                          # trained; 32x32 RGB <-> 4x8x8 latents
    unet = UNet.from_preset("tiny", image_size=8, in_channels=4, num_classes=4)
    ldm = LatentDiffusion(vae, unet, num_classes=4, p_uncond=0.1)   # GaussianDiffusion keyword arguments
    ldm.estimate_scale_factor(images, n=256)                   # latents * scale_factor have unit std
    loss = ldm.training_loss(x, class_labels=y)                # encode (no grad) + the diffusion loss
    images = ldm.sample(16, sampler="dpmpp_2m", steps=20, class_labels=y, guidance_scale=3.0)
    latents = ldm.latent_dataset(data)                         # encode a dataset once (the AE is frozen)

**The autoencoder protocol.** Any ``nn.Module`` with

* ``encode(x)`` returning either a tensor (a deterministic encoder) or a posterior object with a
  ``.mean`` tensor and a ``.sample(generator=...)`` method (fastgen's :class:`~fastgen.models.vae.DiagonalGaussian`;
  diffusers' ``AutoencoderKL`` output, whose ``.latent_dist`` is unwrapped, works too), and
* ``decode(z)`` returning the image tensor (or an object whose ``.sample`` is that tensor);
* optionally ``latent_shape`` ``(C, h, w)`` (else pass ``latent_shape=``, or it is read off the
  first encoded batch).

The autoencoder is frozen: its parameters get ``requires_grad=False``, it is put in eval mode and
stays there when ``.train()`` is called on the wrapper, and trainers optimise only the U-Net.

**Which latent.** ``posterior="mean"`` (default) encodes an image to its posterior mean, so the
latent of an image is deterministic (a cached latent dataset is exact, and the scale factor is a
pure function of the data); ``posterior="sample"`` draws ``z ~ q(z|x)`` like the LDM code base
(``.sample(generator=...)``, so seeded). The scale factor is estimated from the same kind of latent
that training uses.

**The scale factor.** The diffusion runs on ``z * scale_factor``; :meth:`LatentDiffusion.estimate_scale_factor`
sets it to ``1 / std`` of the (unscaled) latents of the first ``n`` images (the standard deviation
over every element of every latent, in float64; the LDM code uses the first training batch), so
the scaled latents have unit variance, matching the unit-variance noise the schedule assumes. It is
a buffer (in ``state_dict`` and in trainer checkpoints); until it is set (or passed as
``scale_factor=``) encoding, decoding, training and sampling raise a ValueError saying so.
"""
from __future__ import annotations

import numbers
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.data import Dataset

from .gaussian_diffusion import GaussianDiffusion

__all__ = ["LatentDiffusion", "LatentDataset"]

POSTERIORS = ("mean", "sample")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _split(item) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(item, (tuple, list)):
        return torch.as_tensor(item[0]), (torch.as_tensor(item[1]) if len(item) > 1 else None)
    return torch.as_tensor(item), None


def iter_image_batches(data, batch_size: int, limit: Optional[int] = None
                       ) -> Iterator[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """``(images [B, C, H, W], labels [B] or None)`` batches of ``data``: an image tensor
    ``[N, C, H, W]``, a map-style dataset of images or ``(image, label)`` pairs, or an iterable of
    batches (a DataLoader yielding tensors or ``(images, labels)``); at most ``limit`` images."""
    _check_int("batch_size", batch_size, 1)
    done = 0
    if isinstance(data, torch.Tensor):
        if data.dim() != 4:
            raise ValueError(f"data as a tensor must be images [N, C, H, W], got shape {tuple(data.shape)}")
        n = data.shape[0] if limit is None else min(limit, data.shape[0])
        for i in range(0, n, batch_size):
            yield data[i:min(i + batch_size, n)], None
        return
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        n = len(data) if limit is None else min(limit, len(data))
        for i in range(0, n, batch_size):
            items = [_split(data[j]) for j in range(i, min(i + batch_size, n))]
            x = torch.stack([it[0] for it in items])
            y = None if items[0][1] is None else torch.stack([it[1] for it in items]).long()
            yield x, y
        return
    if not hasattr(data, "__iter__"):
        raise TypeError(f"data must be an image tensor, a dataset or an iterable of batches, got {type(data).__name__}")
    for batch in data:
        x, y = _split(batch)
        if x.dim() != 4:
            raise ValueError(f"data: batches must be images [B, C, H, W] (or (images, labels)), got {tuple(x.shape)}")
        if limit is not None and done + x.shape[0] > limit:
            x = x[:limit - done]
            y = None if y is None else y[:limit - done]
        done += x.shape[0]
        yield x, (None if y is None else y.long())
        if limit is not None and done >= limit:
            return


class LatentDataset(Dataset):
    """Precomputed scaled latents (and labels) of an image dataset: items ``(latent [C, h, w], label)``
    with label ``-1`` when unlabelled (the convention of :mod:`fastgen.data`), so the diffusion
    trainers train on them like on images. Built by :meth:`LatentDiffusion.latent_dataset`;
    ``scale_factor`` and ``posterior`` record how the latents were made."""

    def __init__(self, latents: torch.Tensor, labels: Optional[torch.Tensor] = None, *,
                 scale_factor: float = 1.0, posterior: str = "mean", num_classes: Optional[int] = None):
        if not isinstance(latents, torch.Tensor) or latents.dim() != 4 or latents.shape[0] < 1:
            raise ValueError(f"latents must be a tensor [N >= 1, C, h, w], got "
                             f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
        if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != (latents.shape[0],)):
            raise ValueError(f"labels must be None or a tensor [{latents.shape[0]}]")
        self.latents, self.labels = latents, None if labels is None else labels.long()
        self.scale_factor, self.posterior, self.num_classes = float(scale_factor), posterior, num_classes

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, index: int):
        label = self.labels[index] if self.labels is not None else torch.tensor(-1)
        return self.latents[index], label


class LatentDiffusion(nn.Module):
    """A frozen autoencoder, a :class:`GaussianDiffusion` over its latents and the latent scale factor.

    Args:
        autoencoder: an ``nn.Module`` following the autoencoder protocol (module docstring); frozen here.
        diffusion: a :class:`GaussianDiffusion` over latents, or the denoiser (a U-Net with
            ``in_channels`` = the latent channels), which is wrapped in a GaussianDiffusion built with
            ``**diffusion_kwargs`` (``schedule``, ``prediction_type``, ``num_classes``, ``p_uncond``, ...).
        scale_factor: the latent scale; None: unset until :meth:`estimate_scale_factor` (or a loaded
            state dict) sets it.
        latent_shape: ``(C, h, w)`` of a latent (default: ``autoencoder.latent_shape``, else read off
            the first encoded batch).
        posterior: ``"mean"`` or ``"sample"``: which latent an image encodes to (module docstring).

    ``forward`` is :meth:`training_loss`. Only ``self.diffusion.model`` has trainable parameters
    (:meth:`trainable_parameters`).
    """

    def __init__(self, autoencoder: nn.Module, diffusion: Union[GaussianDiffusion, nn.Module], *,
                 scale_factor: Optional[float] = None, latent_shape: Optional[Sequence[int]] = None,
                 posterior: str = "mean", **diffusion_kwargs):
        super().__init__()
        if not isinstance(autoencoder, nn.Module):
            raise TypeError(f"autoencoder must be an nn.Module, got {type(autoencoder).__name__}")
        for name in ("encode", "decode"):
            if not callable(getattr(autoencoder, name, None)):
                raise TypeError(f"autoencoder must have an {name}() method (see fastgen.diffusion.latent), "
                                f"{type(autoencoder).__name__} has none")
        if isinstance(diffusion, GaussianDiffusion):
            if diffusion_kwargs:
                raise TypeError(f"diffusion is already a GaussianDiffusion; unexpected keyword arguments "
                                f"{sorted(diffusion_kwargs)}")
        elif isinstance(diffusion, nn.Module):
            diffusion = GaussianDiffusion(diffusion, **diffusion_kwargs)
        else:
            raise TypeError(f"diffusion must be a GaussianDiffusion or a denoiser nn.Module, "
                            f"got {type(diffusion).__name__}")
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")
        self.autoencoder = autoencoder
        self.diffusion = diffusion
        self.posterior = posterior
        autoencoder.requires_grad_(False)
        autoencoder.eval()
        if latent_shape is None:
            latent_shape = getattr(autoencoder, "latent_shape", None)
        self._latent_shape = None
        if latent_shape is not None:
            self._set_latent_shape(latent_shape, "latent_shape")
        sf = float("nan")
        if scale_factor is not None:
            if isinstance(scale_factor, bool) or not isinstance(scale_factor, numbers.Real) or \
                    not (0 < float(scale_factor) < float("inf")):
                raise ValueError(f"scale_factor must be a finite number > 0 or None, got {scale_factor!r}")
            sf = float(scale_factor)
        self.register_buffer("scale_factor", torch.tensor(sf, dtype=torch.float32))

    # ------------------------------------------------------------------ properties
    def _set_latent_shape(self, shape, name: str) -> None:
        shape = tuple(shape)
        if not shape or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in shape):
            raise ValueError(f"{name} must be a non-empty sequence of ints >= 1 (C, h, w), got {shape!r}")
        shape = tuple(int(s) for s in shape)
        in_ch = getattr(self.diffusion.model, "in_channels", None)
        if isinstance(in_ch, int) and in_ch != shape[0]:
            raise ValueError(f"{name}: the latents have {shape[0]} channels but the denoiser takes in_channels = "
                             f"{in_ch}")
        self._latent_shape = shape

    @property
    def latent_shape(self) -> Tuple[int, ...]:
        """``(C, h, w)`` of a latent."""
        if self._latent_shape is None:
            raise ValueError("the latent shape is unknown: pass latent_shape= or encode some data first "
                             "(estimate_scale_factor)")
        return self._latent_shape

    @property
    def has_scale_factor(self) -> bool:
        return bool(torch.isfinite(self.scale_factor))

    @property
    def num_classes(self) -> Optional[int]:
        return self.diffusion.num_classes

    def _scale(self) -> torch.Tensor:
        if not self.has_scale_factor:
            raise ValueError("scale_factor is not set: call estimate_scale_factor(data) or pass scale_factor=")
        return self.scale_factor

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The denoiser's parameters (the autoencoder is frozen)."""
        return (p for p in self.diffusion.model.parameters() if p.requires_grad)

    def train(self, mode: bool = True) -> "LatentDiffusion":
        super().train(mode)
        self.autoencoder.eval()  # frozen: dropout / batch statistics never switch on
        return self

    def _ae_device(self) -> torch.device:
        for t in self.autoencoder.parameters():
            return t.device
        for t in self.autoencoder.buffers():
            return t.device
        return self.scale_factor.device

    # ------------------------------------------------------------------ encode / decode
    def encode_unscaled(self, x: torch.Tensor, *, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The autoencoder's latent of images ``x`` (posterior mean or sample), without the scale."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be an image tensor, got {type(x).__name__}")
        out = self.autoencoder.encode(x)
        out = getattr(out, "latent_dist", out)  # diffusers' AutoencoderKLOutput
        if isinstance(out, torch.Tensor):
            z = out
        elif self.posterior == "mean":
            z = getattr(out, "mean", None)
            if not isinstance(z, torch.Tensor):
                raise TypeError(f"autoencoder.encode returned a {type(out).__name__} without a .mean tensor")
        else:
            if not callable(getattr(out, "sample", None)):
                raise TypeError(f"autoencoder.encode returned a {type(out).__name__} without a .sample() method")
            z = out.sample(generator=generator)
        if self._latent_shape is None:
            self._set_latent_shape(z.shape[1:], "the encoded latents' shape")
        return z

    def encode(self, x: torch.Tensor, *, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Scaled latents ``scale_factor * z`` of images ``x`` (what the diffusion model sees)."""
        scale = self._scale()
        return self.encode_unscaled(x, generator=generator) * scale.to(device=x.device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images of scaled latents ``z``: ``autoencoder.decode(z / scale_factor)``."""
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a latent tensor, got {type(z).__name__}")
        scale = self._scale()
        if self._latent_shape is not None and tuple(z.shape[1:]) != self._latent_shape:
            raise ValueError(f"z must have shape (N, {', '.join(map(str, self._latent_shape))}), got {tuple(z.shape)}")
        out = self.autoencoder.decode(z / scale.to(device=z.device, dtype=z.dtype))
        if not isinstance(out, torch.Tensor):
            out = getattr(out, "sample", out)
        return out

    @torch.no_grad()
    def estimate_scale_factor(self, data, n: int = 256, *, batch_size: int = 64,
                              generator: Optional[torch.Generator] = None) -> float:
        """Set ``scale_factor = 1 / std`` of the unscaled latents of the first ``n`` images of ``data``
        (an image tensor, a dataset, or an iterable of batches) and return it. The std is over all
        elements (float64, unbiased) of latents encoded as ``posterior`` says."""
        _check_int("n", n, 2)
        dev = self._ae_device()
        chunks = [self.encode_unscaled(x.to(dev, torch.float32), generator=generator).double().flatten().cpu()
                  for x, _ in iter_image_batches(data, batch_size, limit=n)]
        if not chunks:
            raise ValueError("data is empty")
        z = torch.cat(chunks)
        if z.numel() < 2:
            raise ValueError("estimate_scale_factor needs at least 2 latent elements")
        std = float(z.std())
        if not (std > 0 and std < float("inf")):
            raise ValueError(f"the latents' standard deviation is {std}: cannot scale them to unit variance")
        self.scale_factor.fill_(1.0 / std)
        return 1.0 / std

    @torch.no_grad()
    def latent_dataset(self, data, *, batch_size: int = 64, generator: Optional[torch.Generator] = None,
                       num_classes: Optional[int] = None) -> LatentDataset:
        """Encode every image of ``data`` once (the autoencoder is frozen, so this is what each
        training step would compute; with ``posterior="sample"`` each image gets one fixed sample)
        into a :class:`LatentDataset` of scaled latents on the CPU, labels kept."""
        scale = self._scale()
        dev = self._ae_device()
        zs, ys = [], []
        for x, y in iter_image_batches(data, batch_size):
            zs.append((self.encode_unscaled(x.to(dev, torch.float32), generator=generator) * scale.to(dev)).cpu())
            ys.append(y)
        if not zs:
            raise ValueError("data is empty")
        labels = None if any(y is None for y in ys) else torch.cat(ys)
        if labels is not None and bool((labels < 0).all()):
            labels = None  # an unlabelled fastgen dataset (labels -1)
        if num_classes is None:
            num_classes = getattr(data, "num_classes", None)
        return LatentDataset(torch.cat(zs), labels, scale_factor=float(scale), posterior=self.posterior,
                             num_classes=num_classes)

    # ------------------------------------------------------------------ training
    def training_loss(self, x: torch.Tensor, class_labels: Optional[torch.Tensor] = None, *,
                      generator: Optional[torch.Generator] = None, **kwargs):
        """The diffusion loss of images ``x``: encode under ``no_grad`` (scaled), then
        :meth:`GaussianDiffusion.loss` on the latents (CFG label dropout with ``p_uncond`` in training
        mode; ``t=``, ``noise=``, ``label_drop=``, ``return_terms=`` are passed on). ``generator``
        draws the posterior sample (``posterior="sample"``) and the diffusion's randomness. With
        precomputed latents call ``self.diffusion.loss`` directly."""
        with torch.no_grad():
            z = self.encode(x, generator=generator)
        return self.diffusion.loss(z, class_labels, generator=generator, **kwargs)

    forward = training_loss

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, *, sampler="ddim", steps: int = 50, class_labels=None, guidance_scale: float = 1.0,
               generator: Optional[torch.Generator] = None, return_latents: bool = False, progress: bool = True,
               clamp: bool = True, model: Optional[nn.Module] = None, sampler_kwargs=None, **kwargs):
        """``n`` images: sample latents with :meth:`GaussianDiffusion.sample` (any fastgen sampler,
        classifier-free guidance with the null class, ``progress`` bar, ``initial_noise=`` and the
        other :func:`fastgen.diffusion.sample` keywords), then decode them. ``clamp`` clamps the images
        to [-1, 1] (the data range; the latents themselves are never clamped). ``model`` samples with
        other weights of the denoiser (e.g. an EMA copy). Returns the images, or ``(images, latents)``
        with ``return_latents=True`` (latents scaled, as the diffusion sees them)."""
        n = _check_int("n", n, 1)
        self._scale()
        if not isinstance(return_latents, bool) or not isinstance(clamp, bool):
            raise TypeError("return_latents and clamp must be bools")
        latents = self.diffusion.sample((n,) + self.latent_shape, sampler=sampler, steps=steps,
                                        guidance_scale=guidance_scale, class_labels=class_labels, generator=generator,
                                        sampler_kwargs=sampler_kwargs, model=model, progress=progress, **kwargs)
        images = self.decode(latents)
        if clamp:
            images = images.clamp(-1.0, 1.0)
        return (images, latents) if return_latents else images
