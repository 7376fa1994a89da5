r"""Convolutional variational autoencoders on fastgen's fused blocks.

    vae = VAE.from_preset("shapes32")                   # 32x32 RGB -> 4x8x8 latents
    out = vae.loss(x)                                    # VAELoss: loss, nll, kl, elbo (per-sample means)
    post = vae.encode(x)                                 # DiagonalGaussian q(z|x)
    z = post.sample()                                    # fused reparameterisation (Philox noise in-kernel)
    x_hat = vae.decode(z)                                # the decoder's mean image
    x_new = vae.sample(16)                               # decode z ~ N(0, I)
    logp = vae.iwae_log_likelihood(x, k=64)              # importance-weighted bound on log p(x) (nats)

The model (Kingma & Welling 2014; the architecture is the latent-diffusion autoencoder's,
Rombach et al. 2022): a 3x3 input convolution; per resolution level ``num_res_blocks``
ResBlocks (fused GroupNorm+SiLU, :class:`fastgen.nn.unet_blocks.ResBlock` without an embedding)
and a 2x downsampling; a middle ResBlock, optional self-attention and ResBlock; GroupNorm-SiLU
and a 3x3 convolution to ``2 latent_channels`` maps (posterior mean and log-variance). The
decoder mirrors it (``num_res_blocks + 1`` ResBlocks per level, nearest-neighbour 2x
upsampling + conv). A latent has ``latent_channels x (size / 2^(levels-1))^2`` entries.

The posterior is a diagonal Gaussian; ``z = mu + sigma eps`` and its KL from N(0, I) come from
one fused op (:func:`fastgen.functional.reparameterize`, forward and backward in one pass each).

Likelihoods ``p(x|z)`` (images in [-1, 1], as fastgen's datasets):

* ``"gaussian"``: ``N(x; decoder(z), sigma_x^2 I)`` with one learned ``log sigma_x`` (the
  sigma-VAE of Rybkin et al. 2021: the optimal-variance Gaussian, which balances reconstruction
  and KL without hand tuning; ``learn_sigma_x=False`` keeps it at ``sigma_x``). Pixels are
  treated as continuous, so ``log p(x)`` is a density (nats; it can be positive).
* ``"bernoulli"``: the decoder emits logits, the targets are ``(x + 1) / 2`` in [0, 1] (binary
  or, as usual for MNIST-like data, grey levels used as probabilities); the mean image is
  ``2 sigmoid(logits) - 1``.

The training loss is the negative β-ELBO per sample, ``nll + beta KL`` (β-VAE, Higgins et al.
2017; β = 1 is the ELBO). :meth:`VAE.elbo` is the exact single-sample ELBO estimate and
:meth:`VAE.iwae_log_likelihood` the IWAE bound (Burda et al. 2016) with K samples, tighter as K
grows, for comparing models.
"""
from __future__ import annotations

import math
from typing import Dict, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..functional import reparameterize
from ..nn import GroupNormAct
from ..nn.unet_blocks import AttentionBlock, Downsample, ResBlock, Upsample, _groups

LIKELIHOODS = ("gaussian", "bernoulli")
_LOG_2PI = math.log(2.0 * math.pi)

PRESETS: Dict[str, dict] = {
    # CPU tests: 16x16 -> 4x8x8, ~0.16M params
    "tiny": dict(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, latent_channels=4,
                 attention=False, num_groups=8),
    # the embedded shapes dataset / the LDM demo: 32x32 -> 4x8x8 (f4), ~2.7M params
    "shapes32": dict(image_size=32, base_channels=32, channel_mult=(1, 2, 4), num_res_blocks=1, latent_channels=4,
                     attention=True, num_groups=8),
    # latent diffusion's KL-f4 autoencoder shape (Rombach et al. 2022), 64x64 -> 3x16x16
    "kl-f4": dict(image_size=64, base_channels=128, channel_mult=(1, 2, 4), num_res_blocks=2, latent_channels=3,
                  attention=True, num_groups=32),
    # KL-f8 (Stable Diffusion's autoencoder shape), 256x256 -> 4x32x32
    "kl-f8": dict(image_size=256, base_channels=128, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                  latent_channels=4, attention=True, num_groups=32),
}


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"VAE: {name} must be an int >= {minimum}, got {value!r}")
    return value


class DiagonalGaussian:
    """A diagonal Gaussian ``N(mean, exp(logvar))`` over ``(N, ...)`` tensors (a VAE posterior).

    ``logvar`` is clamped to [-30, 20] (as latent diffusion's autoencoder does) so ``exp`` stays
    finite in fp16/bf16. Methods reduce over every dimension but the first (per-sample values).
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        if mean.shape != logvar.shape:
            raise ValueError(f"DiagonalGaussian: mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ")
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> "DiagonalGaussian":
        """From an encoder output with ``2 C`` channels: the first C are the mean, the rest the log-variance."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def rsample_with_kl(self, *, generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None,
                        seed: Optional[int] = None, offset: int = 0):
        """A reparameterised sample and the per-sample ``KL(q || N(0, I))`` from the fused op
        (:func:`fastgen.functional.reparameterize`; differentiable w.r.t. mean and logvar). A given
        ``noise`` is cast to the mean's dtype (under bf16 autocast the encoder's output is bf16)."""
        if isinstance(noise, torch.Tensor) and noise.dtype != self.mean.dtype:
            noise = noise.to(self.mean.dtype)
        return reparameterize(self.mean, self.logvar, noise=noise, generator=generator, seed=seed, offset=offset)

    def sample(self, *, generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None,
               seed: Optional[int] = None, offset: int = 0) -> torch.Tensor:
        """A reparameterised sample ``mean + std * eps``."""
        return self.rsample_with_kl(generator=generator, noise=noise, seed=seed, offset=offset).z

    def kl(self) -> torch.Tensor:
        """Closed-form ``KL(q || N(0, I))`` per sample (fp32; float64 for float64 inputs)."""
        ct = torch.float64 if self.mean.dtype == torch.float64 else torch.float32
        m, lv = self.mean.to(ct), self.logvar.to(ct)
        return 0.5 * (m.square() + lv.exp() - 1.0 - lv).flatten(1).sum(1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log q(z)`` per sample (nats)."""
        ct = torch.float64 if self.mean.dtype == torch.float64 else torch.float32
        m, lv, z = self.mean.to(ct), self.logvar.to(ct), z.to(ct)
        return -0.5 * ((z - m).square() * torch.exp(-lv) + lv + _LOG_2PI).flatten(1).sum(1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` per sample (nats, fp32 or float64)."""
    z = z.to(torch.float64 if z.dtype == torch.float64 else torch.float32)
    return -0.5 * (z.square() + _LOG_2PI).flatten(1).sum(1)


class VAEOutput(NamedTuple):
    recon: torch.Tensor          # the decoder's mean image for the sampled z
    posterior: DiagonalGaussian  # q(z|x)
    z: torch.Tensor              # the sample
    kl: torch.Tensor             # (N,) KL(q(z|x) || N(0, I))
    decoded: torch.Tensor        # the decoder's raw output (Gaussian mean, or Bernoulli logits)


class VAELoss(NamedTuple):
    loss: torch.Tensor   # mean over the batch of nll + beta kl (what to backpropagate)
    nll: torch.Tensor    # mean -log p(x|z) (nats per sample)
    kl: torch.Tensor     # mean KL(q(z|x) || p(z)) (nats per sample)
    elbo: torch.Tensor   # mean ELBO = -(nll + kl) (nats per sample; beta does not enter)
    recon: torch.Tensor  # the reconstruction (decoder mean) of the batch


class Encoder(nn.Module):
    """Image -> ``2 latent_channels`` posterior moments (see the module docstring)."""

    def __init__(self, *, in_channels: int, base_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                 latent_channels: int, attention: bool, num_heads: int, num_groups: int, dropout: float):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        blocks: list = []
        ch = base_channels
        for level, mult in enumerate(channel_mult):
            out = base_channels * mult
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, 0, out, dropout=dropout, num_groups=num_groups))
                ch = out
            if level != len(channel_mult) - 1:
                blocks.append(Downsample(ch, use_conv=True))
        self.down = nn.Sequential(*blocks)
        self.mid = _middle(ch, attention, num_heads, num_groups, dropout)
        self.norm_out = GroupNormAct(_groups(ch, num_groups), ch, activation="silu")
        self.conv_out = nn.Conv2d(ch, 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.norm_out(self.mid(self.down(self.conv_in(x)))))


class Decoder(nn.Module):
    """Latent -> image (Gaussian mean, or Bernoulli logits)."""

    def __init__(self, *, out_channels: int, base_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                 latent_channels: int, attention: bool, num_heads: int, num_groups: int, dropout: float):
        super().__init__()
        ch = base_channels * channel_mult[-1]
        self.conv_in = nn.Conv2d(latent_channels, ch, 3, padding=1)
        self.mid = _middle(ch, attention, num_heads, num_groups, dropout)
        blocks: list = []
        for level in reversed(range(len(channel_mult))):
            out = base_channels * channel_mult[level]
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(ch, 0, out, dropout=dropout, num_groups=num_groups))
                ch = out
            if level != 0:
                blocks.append(Upsample(ch, use_conv=True))
        self.up = nn.Sequential(*blocks)
        self.norm_out = GroupNormAct(_groups(ch, num_groups), ch, activation="silu")
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.norm_out(self.up(self.mid(self.conv_in(z)))))


def _middle(ch: int, attention: bool, num_heads: int, num_groups: int, dropout: float) -> nn.Sequential:
    layers = [ResBlock(ch, 0, dropout=dropout, num_groups=num_groups)]
    if attention:
        layers.append(AttentionBlock(ch, num_heads=num_heads, num_groups=num_groups))
    layers.append(ResBlock(ch, 0, dropout=dropout, num_groups=num_groups))
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """A convolutional VAE (see the module docstring).

    Args:
        image_size: training resolution (must be divisible by ``2^(len(channel_mult) - 1)``).
        in_channels: image channels. base_channels, channel_mult, num_res_blocks: widths and depth.
        latent_channels: channels of the latent map. attention: self-attention in the bottleneck.
        num_heads: its heads. num_groups: GroupNorm groups (fewer where the width is small).
        dropout: in the ResBlocks. likelihood: ``"gaussian"`` or ``"bernoulli"``.
        beta: KL weight of :meth:`loss` (β-VAE; 1 = the ELBO).
        sigma_x: the Gaussian likelihood's (initial) standard deviation; learn_sigma_x: learn it.
    """

    def __init__(self, *, image_size: int = 32, in_channels: int = 3, base_channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1, latent_channels: int = 4,
                 attention: bool = True, num_heads: int = 1, num_groups: int = 32, dropout: float = 0.0,
                 likelihood: str = "gaussian", beta: float = 1.0, sigma_x: float = 0.1, learn_sigma_x: bool = True):
        super().__init__()
        _check_int("in_channels", in_channels, 1)
        _check_int("base_channels", base_channels, 1)
        _check_int("num_res_blocks", num_res_blocks, 1)
        _check_int("latent_channels", latent_channels, 1)
        _check_int("num_heads", num_heads, 1)
        _check_int("num_groups", num_groups, 1)
        channel_mult = tuple(channel_mult)
        if not channel_mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in channel_mult):
            raise ValueError(f"VAE: channel_mult must be a non-empty sequence of ints >= 1, got {channel_mult!r}")
        factor = 2 ** (len(channel_mult) - 1)
        _check_int("image_size", image_size, 1)
        if image_size % factor:
            raise ValueError(f"VAE: image_size = {image_size} is not divisible by the downsampling factor {factor} "
                             f"(channel_mult has {len(channel_mult)} levels)")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"VAE: likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if isinstance(beta, bool) or not (isinstance(beta, (int, float)) and beta >= 0 and math.isfinite(beta)):
            raise ValueError(f"VAE: beta must be a finite float >= 0, got {beta!r}")
        if isinstance(sigma_x, bool) or not (isinstance(sigma_x, (int, float)) and sigma_x > 0 and math.isfinite(sigma_x)):
            raise ValueError(f"VAE: sigma_x must be a finite float > 0, got {sigma_x!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"VAE: dropout must be in [0, 1), got {dropout!r}")
        self.config = dict(image_size=image_size, in_channels=in_channels, base_channels=base_channels,
                           channel_mult=list(channel_mult), num_res_blocks=num_res_blocks,
                           latent_channels=latent_channels, attention=bool(attention), num_heads=num_heads,
                           num_groups=num_groups, dropout=float(dropout), likelihood=likelihood, beta=float(beta),
                           sigma_x=float(sigma_x), learn_sigma_x=bool(learn_sigma_x))
        self.image_size, self.in_channels, self.latent_channels = image_size, in_channels, latent_channels
        self.downsample_factor = factor
        self.likelihood, self.beta = likelihood, float(beta)
        common = dict(base_channels=base_channels, channel_mult=channel_mult, num_res_blocks=num_res_blocks,
                      latent_channels=latent_channels, attention=attention, num_heads=num_heads,
                      num_groups=num_groups, dropout=dropout)
        self.encoder = Encoder(in_channels=in_channels, **common)
        self.decoder = Decoder(out_channels=in_channels, **common)
        log_sigma = torch.tensor(math.log(sigma_x))
        if likelihood == "gaussian" and learn_sigma_x:
            self.log_sigma_x = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma_x", log_sigma)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VAE":
        """``"tiny"`` (tests), ``"shapes32"`` (the embedded dataset), ``"kl-f4"``, ``"kl-f8"`` (LDM shapes)."""
        if name not in PRESETS:
            raise ValueError(f"VAE.from_preset: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def latent_shape(self) -> tuple:
        """``(C, H, W)`` of a latent at ``image_size``."""
        s = self.image_size // self.downsample_factor
        return (self.latent_channels, s, s)

    # ------------------------------------------------------------------ encode / decode
    def _check_images(self, x: torch.Tensor, name: str = "x") -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"VAE: {name} must be a tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"VAE: {name} must be (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % self.downsample_factor or x.shape[-2] % self.downsample_factor:
            raise ValueError(f"VAE: {name}'s height and width must be divisible by {self.downsample_factor}, "
                             f"got {tuple(x.shape[-2:])}")

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """``q(z|x)`` for images ``x`` in [-1, 1]."""
        self._check_images(x)
        return DiagonalGaussian.from_moments(self.encoder(x))

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's output: the Gaussian mean, or the Bernoulli logits."""
        if not isinstance(z, torch.Tensor) or z.dim() != 4 or z.shape[1] != self.latent_channels:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"VAE: z must be (N, {self.latent_channels}, h, w), got {got}")
        return self.decoder(z)

    def _mean_image(self, raw: torch.Tensor) -> torch.Tensor:
        return raw if self.likelihood == "gaussian" else 2.0 * torch.sigmoid(raw) - 1.0

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The mean image ``E[x|z]`` (in [-1, 1] for the Bernoulli likelihood)."""
        return self._mean_image(self.decode_raw(z))

    def forward(self, x: torch.Tensor, *, sample_posterior: bool = True,
                generator: Optional[torch.Generator] = None, noise: Optional[torch.Tensor] = None) -> VAEOutput:
        """Encode, sample z (or take the posterior mean), decode."""
        post = self.encode(x)
        if sample_posterior:
            z, kl = post.rsample_with_kl(generator=generator, noise=noise)
        else:
            z, kl = post.mode(), post.kl()
        raw = self.decode_raw(z)
        return VAEOutput(self._mean_image(raw), post, z, kl, raw)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *, sample_posterior: bool = False,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``decode(encode(x))`` with the posterior mean (or a sample)."""
        return self(x, sample_posterior=sample_posterior, generator=generator).recon

    @torch.no_grad()
    def sample(self, n: int, *, generator: Optional[torch.Generator] = None, temperature: float = 1.0) -> torch.Tensor:
        """Decode ``n`` latents drawn from the prior ``N(0, temperature^2 I)``."""
        _check_int("n", n, 1)
        p = next(self.parameters())
        z = torch.randn((n,) + self.latent_shape, generator=generator, device=p.device, dtype=p.dtype)
        return self.decode(z * temperature)

    # ------------------------------------------------------------------ likelihoods and bounds
    def log_likelihood(self, x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """``log p(x|z)`` per sample (nats, fp32) given the decoder's raw output for z."""
        ct = torch.float64 if decoded.dtype == torch.float64 else torch.float32
        x, d = x.to(ct), decoded.to(ct)
        if self.likelihood == "gaussian":
            ls = self.log_sigma_x.to(ct)
            per = -0.5 * (x - d).square() * torch.exp(-2.0 * ls) - ls - 0.5 * _LOG_2PI
        else:
            per = -F.binary_cross_entropy_with_logits(d, (x + 1.0) * 0.5, reduction="none")
        return per.flatten(1).sum(1)

    def loss(self, x: torch.Tensor, *, beta: Optional[float] = None, generator: Optional[torch.Generator] = None,
             noise: Optional[torch.Tensor] = None) -> VAELoss:
        """The negative β-ELBO, averaged over the batch (one posterior sample per image)."""
        beta = self.beta if beta is None else beta
        out = self(x, generator=generator, noise=noise)
        nll = -self.log_likelihood(x, out.decoded)
        nll_m, kl_m = nll.mean(), out.kl.mean()
        return VAELoss(nll_m + beta * kl_m, nll_m, kl_m, -(nll_m + kl_m), out.recon)

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, *, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Per-sample ELBO ``E_q[log p(x|z)] - KL(q || p)`` (one z per image; nats)."""
        out = self(x, generator=generator)
        return self.log_likelihood(x, out.decoded) - out.kl

    @torch.no_grad()
    def iwae_log_likelihood(self, x: torch.Tensor, k: int = 64, *, generator: Optional[torch.Generator] = None,
                            chunk: int = 16) -> torch.Tensor:
        """Per-sample importance-weighted bound ``log (1/K) sum_k p(x, z_k) / q(z_k|x)`` (nats).

        A lower bound on ``log p(x)`` that tightens with K (K = 1 is the ELBO); ``chunk`` samples
        are decoded per pass to bound memory.
        """
        _check_int("k", k, 1)
        _check_int("chunk", chunk, 1)
        post = self.encode(x)
        n = x.shape[0]
        terms = []
        done = 0
        while done < k:
            m = min(chunk, k - done)
            mean = post.mean.repeat_interleave(m, 0)
            logvar = post.logvar.repeat_interleave(m, 0)
            q = DiagonalGaussian(mean, logvar)
            z = q.sample(generator=generator)
            xr = x.repeat_interleave(m, 0)
            lw = self.log_likelihood(xr, self.decode_raw(z)) + standard_normal_log_prob(z) - q.log_prob(z)
            terms.append(lw.view(n, m))
            done += m
        lw = torch.cat(terms, 1)
        return torch.logsumexp(lw, 1) - math.log(k)

    def bits_per_dim(self, log_likelihood: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample nats (from :meth:`elbo` / :meth:`iwae_log_likelihood`) to bits per dimension.

        Gaussian: the density of images in [-1, 1] rescaled to [0, 255] (x = p / 127.5 - 1), i.e. the usual 8-bit
        figure up to the discretisation, ``-(log p(x) - D log 127.5) / (D log 2)``. Bernoulli:
        ``-log p(x) / (D log 2)`` of the targets ``(x + 1) / 2``.
        """
        d = x[0].numel()
        shift = d * math.log(127.5) if self.likelihood == "gaussian" else 0.0
        return -(log_likelihood - shift) / (d * math.log(2.0))
