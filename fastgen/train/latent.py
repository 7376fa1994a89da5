"""The latent-diffusion trainer: :class:`DiffusionTrainer` on precomputed latents, with sample grids
decoded by the frozen autoencoder and self-contained checkpoints.

    ldm = LatentDiffusion(vae, UNet.from_preset("tiny", image_size=8, in_channels=4, num_classes=4), num_classes=4)
    trainer = LatentDiffusionTrainer(ldm, load_dataset("shapes", 32), batch_size=64, out_dir="runs/ldm",
                                     sample_every=500, checkpoint_every=500)
    trainer.train(5000)
    ldm = load_latent_diffusion("runs/ldm")      # the autoencoder, the EMA U-Net and the scale factor

Since the autoencoder is frozen, encoding an image gives the same latent at every step, so the
trainer encodes the dataset once (:meth:`LatentDiffusion.latent_dataset`; estimating the scale
factor first when it is not set) and then trains exactly like :class:`DiffusionTrainer` on those
latents: the same step, EMA, data order, label dropout, torchrun data parallelism and
bit-identical resume. ``clip_sample`` defaults to False (latents are not bounded like images).

Checkpoints (kind ``latent_diffusion``) are :class:`DiffusionTrainer`'s plus the autoencoder's
weights (``autoencoder/...``) and the scale factor (``latent/scale_factor``), and metadata with the
autoencoder's class and constructor config, the latent shape and the posterior mode, so
:func:`load_latent_diffusion` rebuilds the whole model from the one file (a fastgen ``VAE`` without
code; another autoencoder when you pass an instance to load the weights into). Resuming checks
that the trainer's autoencoder and scale factor are the checkpoint's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from ..diffusion.latent import LatentDataset, LatentDiffusion
from ..images import save_image_grid
from . import checkpoint as ckpt
from .base import check_setting, load_module_weights, resolve_checkpoint
from .diffusion import DiffusionTrainer, diffusion_from_checkpoint

__all__ = ["LatentDiffusionTrainer", "load_latent_diffusion"]


class LatentDiffusionTrainer(DiffusionTrainer):
    """Train the U-Net of a :class:`~fastgen.diffusion.LatentDiffusion` on an image dataset.

    Args:
        ldm: the model; moved to ``device`` (default: its parameters' device).
        dataset: images (items ``image`` or ``(image, label)``, see :mod:`fastgen.data`), or a
            :class:`~fastgen.diffusion.latent.LatentDataset` already encoded with this model's
            scale factor.
        scale_samples: images used by :meth:`LatentDiffusion.estimate_scale_factor` when the model
            has no scale factor yet.
        encode_batch_size: batch size of the one-off encoding pass.
        encode_seed: seeds the posterior samples of ``posterior="sample"`` models (scale factor and
            latent dataset).
        **kwargs: :class:`DiffusionTrainer`'s settings (``batch_size``, ``lr``, ``ema_decay``,
            ``sample_every``, ``guidance_scale``, ...); ``clip_sample`` defaults to False here.
    """

    kind = "latent_diffusion"

    def __init__(self, ldm: LatentDiffusion, dataset, *, scale_samples: int = 256, encode_batch_size: int = 64,
                 encode_seed: int = 0, **kwargs):
        if not isinstance(ldm, LatentDiffusion):
            raise TypeError(f"ldm must be a fastgen.diffusion.LatentDiffusion, got {type(ldm).__name__}")
        import numbers
        check_setting("scale_samples", scale_samples, numbers.Integral, minimum=2)
        check_setting("encode_batch_size", encode_batch_size, numbers.Integral, minimum=1)
        check_setting("encode_seed", encode_seed, numbers.Integral, minimum=0)
        device = kwargs.get("device")
        if device is None:
            p = next(ldm.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
            kwargs["device"] = device
        ldm.to(device)
        kwargs.setdefault("clip_sample", False)
        if isinstance(dataset, LatentDataset):
            if not ldm.has_scale_factor:
                raise ValueError("dataset is a LatentDataset but the model has no scale_factor: build the latent "
                                 "dataset with ldm.latent_dataset(images) after estimate_scale_factor")
            if abs(dataset.scale_factor - float(ldm.scale_factor)) > 1e-6 * abs(float(ldm.scale_factor)):
                raise ValueError(f"dataset: the latents were scaled by {dataset.scale_factor} but the model's "
                                 f"scale_factor is {float(ldm.scale_factor)}")
            latents = dataset
        else:
            if not ldm.has_scale_factor:
                ldm.estimate_scale_factor(dataset, n=scale_samples, batch_size=encode_batch_size,
                                          generator=torch.Generator(ldm._ae_device()).manual_seed(encode_seed))
            latents = ldm.latent_dataset(dataset, batch_size=encode_batch_size,
                                         generator=torch.Generator(ldm._ae_device()).manual_seed(encode_seed + 1))
        self.ldm = ldm
        super().__init__(ldm.diffusion, latents, **kwargs)
        self.latents = latents
        self.config.update(scale_factor=float(ldm.scale_factor), posterior=ldm.posterior,
                           latent_shape=list(ldm.latent_shape), scale_samples=scale_samples,
                           encode_seed=encode_seed)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: Optional[int] = None, *, class_labels: Optional[torch.Tensor] = None,
               steps: Optional[int] = None, seed: int = 0, return_latents: bool = False, clamp: bool = True,
               **kwargs):
        """``n`` decoded images from the EMA weights (see :meth:`DiffusionTrainer.sample`; the latents
        with ``return_latents=True``: ``(images, latents)``); images clamped to [-1, 1] unless ``clamp=False``."""
        latents = super().sample(n, class_labels=class_labels, steps=steps, seed=seed, **kwargs)
        images = self.ldm.decode(latents)
        if clamp:
            images = images.clamp(-1.0, 1.0)
        return (images, latents) if return_latents else images

    def save_samples(self, path: Optional[Union[str, Path]] = None) -> Optional[Path]:
        """Write a PNG grid of decoded samples (main process; default ``out_dir/samples/step_N.png``)."""
        if not self.is_main:
            return None
        if path is None:
            if self.out_dir is None:
                raise ValueError("save_samples: pass path= or give the trainer an out_dir")
            path = self.out_dir / "samples" / f"step_{self.step_count:08d}.png"
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            images = self.sample()  # sampling must not move the training RNG streams
        save_image_grid(images, path, upscale=max(1, 64 // images.shape[-1]), ncols=self._grid_columns())
        return Path(path)

    # ------------------------------------------------------------------ checkpoints
    def _state_tensors(self) -> Dict[str, torch.Tensor]:
        tensors = super()._state_tensors()
        tensors.update(ckpt.with_prefix("autoencoder", self.ldm.autoencoder.state_dict()))
        tensors["latent/scale_factor"] = self.ldm.scale_factor.detach().clone()
        return tensors

    def _meta(self) -> Dict[str, Any]:
        ae = self.ldm.autoencoder
        config = getattr(ae, "config", None)
        return {**super()._meta(), "autoencoder_class": type(ae).__name__,
                "autoencoder_config": config if isinstance(config, dict) else None,
                "latent": {"scale_factor": float(self.ldm.scale_factor), "latent_shape": list(self.ldm.latent_shape),
                           "posterior": self.ldm.posterior}}

    def _load_state(self, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any], path: Path) -> None:
        saved = ckpt.strip_prefix("autoencoder", tensors)
        own = self.ldm.autoencoder.state_dict()
        if saved.keys() != own.keys() or any(not torch.equal(saved[k].cpu(), own[k].detach().cpu()) for k in own):
            raise ValueError(f"checkpoint {str(path)!r} was trained with another autoencoder (its weights differ "
                             "from this trainer's): resume with the same autoencoder")
        sf = tensors.get("latent/scale_factor")
        if sf is None or not torch.equal(sf.cpu(), self.ldm.scale_factor.detach().cpu()):
            raise ValueError(f"checkpoint {str(path)!r} has scale_factor "
                             f"{None if sf is None else float(sf)} but this trainer's latents use "
                             f"{float(self.ldm.scale_factor)}: pass scale_factor= from the checkpoint to resume")
        super()._load_state(tensors, meta, path)


def load_latent_diffusion(path: Union[str, Path], *, ema: bool = True, device: Union[str, torch.device] = "cpu",
                          autoencoder: Optional[torch.nn.Module] = None) -> LatentDiffusion:
    """Rebuild a :class:`LatentDiffusion` from a :class:`LatentDiffusionTrainer` checkpoint (a file, or
    a run folder: its newest checkpoint): the U-Net with the EMA weights (``ema=True``, when the run
    kept them) or the raw trained ones, the autoencoder with its saved weights, the scale factor, in
    eval mode. A fastgen ``VAE`` is rebuilt from its saved config; for another autoencoder pass an
    instance of the same architecture as ``autoencoder=`` and the saved weights are loaded into it."""
    path = resolve_checkpoint(path)
    tensors, meta = ckpt.load_checkpoint(path)
    if meta.get("kind") != "latent_diffusion":
        raise ValueError(f"checkpoint {str(path)!r} is not a latent-diffusion checkpoint (kind {meta.get('kind')!r})")
    diffusion = diffusion_from_checkpoint(tensors, meta, path, ema=ema)
    if autoencoder is None:
        if meta.get("autoencoder_class") != "VAE" or not isinstance(meta.get("autoencoder_config"), dict):
            raise ValueError(f"checkpoint {str(path)!r} holds a {meta.get('autoencoder_class')!r} autoencoder that "
                             "cannot be rebuilt without code: pass autoencoder= (an instance to load the weights into)")
        from ..models.vae import VAE

        autoencoder = VAE(**meta["autoencoder_config"])
    elif not isinstance(autoencoder, torch.nn.Module):
        raise TypeError(f"autoencoder must be an nn.Module or None, got {type(autoencoder).__name__}")
    load_module_weights(autoencoder, ckpt.strip_prefix("autoencoder", tensors), path, "autoencoder")
    lat = meta["latent"]
    ldm = LatentDiffusion(autoencoder, diffusion, scale_factor=float(tensors["latent/scale_factor"]),
                          latent_shape=lat["latent_shape"], posterior=lat["posterior"])
    ldm.scale_factor.copy_(tensors["latent/scale_factor"])  # bit-exact (the constructor goes through a float)
    return ldm.to(device).eval()
