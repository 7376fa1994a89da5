r"""DCGAN (Radford et al. 2016) and the conditional / regularised discriminators built on it: cGAN
(Mirza & Osindero 2014), ACGAN (Odena et al. 2017), InfoGAN (Chen et al. 2016), WGAN(-GP) critics
(Arjovsky et al. 2017; Gulrajani et al. 2017), the projection discriminator (Miyato & Koyama 2018),
spectral normalisation (Miyato et al. 2018) and SAGAN's self-attention (Zhang et al. 2019).

    G = DCGANGenerator(z_dim=100, img_resolution=64)
    D = DCGANDiscriminator(img_resolution=64)
    img = G(torch.randn(8, 100))                       # (8, 3, 64, 64) in [-1, 1]
    logits = D(img)                                    # (8, 1)

    # class-conditional: G concatenates one-hot labels to z, D projects (Miyato & Koyama)
    G = DCGANGenerator(img_resolution=32, c_dim=10)
    D = DCGANDiscriminator(img_resolution=32, c_dim=10, cond="projection", spectral_norm=True, norm="none")
    logits = D(G(z, c), c)                             # c: (N,) class indices or (N, 10) one-hot / soft

    # WGAN-GP critic: no BatchNorm (the penalty is per sample)
    critic = DCGANDiscriminator(img_resolution=32, norm="layer")

    # ACGAN / InfoGAN: the heads share D's trunk; the output is a DiscriminatorOutput
    D = DCGANDiscriminator(img_resolution=32, aux_classes=10, info_cat_dims=(10,), info_cont_dim=2)
    out = D(img)        # out.logits (N, 1), out.class_logits (N, 10), out.info_logits ((N, 10),),
                        # out.info_mean / out.info_log_std (N, 2)

Generator: ``[z, one-hot(c), InfoGAN codes]`` -> a 4x4 transposed conv (a linear projection to
4x4xC) -> fractionally-strided 4x4 stride-2 transposed convs halving the channels up to the output
resolution; BatchNorm + ReLU after every layer but the last, whose bias and Tanh are one fused op.
Channels at resolution r: ``base_channels * img_resolution / (2 r)`` (64px, base 64: 512 at 4x4).

Discriminator: strided 4x4 convs doubling the channels from ``base_channels`` down to 4x4, LeakyReLU
0.2, no norm after the first conv; then ``phi(x)`` = the flattened 4x4 features (optionally with the
minibatch standard deviation appended) and ``logit = psi(phi(x))`` (a linear layer: DCGAN's last 4x4
valid conv) ``+ <embed(y), phi(x)>`` for the projection discriminator. Where no norm follows a conv,
its bias and the LeakyReLU are one fused op (:class:`fastgen.nn.BiasAct`) with fused first and
second derivatives, so R1 / WGAN-GP penalties through the network stay on fused kernels; the layer /
instance norms are the fused GroupNorm op and the self-attention block is
:class:`fastgen.nn.SelfAttention2d` (both twice differentiable too).

**BatchNorm and gradient penalties do not mix**: with batch statistics, d D(x_i) / d x depends on
the whole batch, so the per-sample penalties of R1 and WGAN-GP lose their meaning. Use
``norm="layer"`` (WGAN-GP's choice), ``"instance"`` or ``"none"`` for a critic trained with a
gradient penalty. A BatchNorm discriminator in training mode warns once when its input is a leaf
that requires grad (how penalties are computed).
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..nn import BiasAct, MinibatchStdDev, SelfAttention2d
from . import _gan as U

PRESETS: Dict[str, dict] = {
    # unit tests
    "tiny": dict(img_resolution=16, base_channels=8),
    # CIFAR-10 / 32x32 datasets
    "32px": dict(img_resolution=32, base_channels=64),
    # 64x64 (LSUN bedrooms, CelebA): dcgan.torch's / pytorch/examples' widths (512 channels at 4x4; the
    # paper's figure is twice as wide: base_channels=128)
    "64px": dict(img_resolution=64, base_channels=64),
}


def _preset(cls, name: str, overrides: dict):
    if name not in PRESETS:
        raise ValueError(f"{cls.__name__}.from_preset: unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return cls(**{**PRESETS[name], **overrides})


class InfoCodes(NamedTuple):
    """InfoGAN latent codes: ``cat`` ``(N, len(info_cat_dims))`` integer categories (column i in
    [0, info_cat_dims[i])), ``cont`` ``(N, info_cont_dim)`` continuous codes (InfoGAN draws them
    uniformly in [-1, 1]). Either is None when the model has no codes of that kind."""
    cat: Optional[torch.Tensor]
    cont: Optional[torch.Tensor]


class DiscriminatorOutput(NamedTuple):
    """What a discriminator with an ACGAN and/or InfoGAN head returns (a tuple, so it unpacks):

    * ``logits`` ``(N, 1)``: real/fake (after a sigmoid with ``out="sigmoid"``);
    * ``class_logits`` ``(N, aux_classes)``: ACGAN's classifier (None without the head);
    * ``info_logits``: one ``(N, K_i)`` tensor per categorical code (``()`` without);
    * ``info_mean``, ``info_log_std`` ``(N, info_cont_dim)``: Q's factored Gaussian over the continuous
      codes (None without).

    They feed :func:`fastgen.gan.acgan_loss`, :func:`fastgen.gan.infogan_categorical_loss` (per code) and
    :func:`fastgen.gan.infogan_continuous_loss`."""
    logits: torch.Tensor
    class_logits: Optional[torch.Tensor]
    info_logits: Tuple[torch.Tensor, ...]
    info_mean: Optional[torch.Tensor]
    info_log_std: Optional[torch.Tensor]


CodesLike = Union[InfoCodes, Tuple[Optional[torch.Tensor], Optional[torch.Tensor]], torch.Tensor, None]


def _info_args(owner: str, info_cat_dims, info_cont_dim) -> Tuple[list, int]:
    cats = U.check_int_list(owner, "info_cat_dims", info_cat_dims, 2)
    return cats, U.check_int(owner, "info_cont_dim", info_cont_dim, 0)


# ----------------------------------------------------------------------------- generator
class DCGANGenerator(nn.Module):
    """DCGAN generator ``G(z, c=None, codes=None) -> (N, img_channels, R, R)`` in [-1, 1] (see the
    module docstring).

    Args:
        z_dim: size of z. img_resolution: output size, a power of two >= 8. img_channels: 3 or 1.
        base_channels: channels of the last hidden layer (doubling towards 4x4).
        c_dim: number of classes (0: unconditional). cond: ``"concat"`` (one-hot labels appended to z,
            cGAN / ACGAN) or ``"none"`` (only valid with c_dim=0).
        info_cat_dims, info_cont_dim: InfoGAN codes appended to z: categorical codes with these
            numbers of categories (one-hot) and continuous codes (see :class:`InfoCodes`).
        norm: ``"batch"`` (DCGAN) or ``"none"`` (then each transposed conv has a bias, fused with ReLU).
        init: ``"dcgan"`` (N(0, 0.02) weights, N(1, 0.02) BatchNorm gains) or ``"default"`` (PyTorch's).
    """

    def __init__(self, *, z_dim: int = 100, img_resolution: int = 64, img_channels: int = 3, base_channels: int = 64,
                 c_dim: int = 0, cond: str = "concat", info_cat_dims: Sequence[int] = (), info_cont_dim: int = 0,
                 norm: str = "batch", init: str = "dcgan"):
        super().__init__()
        o = "DCGANGenerator"
        U.check_int(o, "z_dim", z_dim)
        U.check_pow2(o, "img_resolution", img_resolution, 8)
        U.check_int(o, "img_channels", img_channels)
        U.check_int(o, "base_channels", base_channels)
        U.check_int(o, "c_dim", c_dim, 0)
        U.check_choice(o, "cond", cond, ("concat", "none"))
        if c_dim and cond == "none":
            raise ValueError(f"{o}: c_dim = {c_dim} needs cond='concat' (cond='none' is for unconditional models)")
        cats, info_cont_dim = _info_args(o, info_cat_dims, info_cont_dim)
        U.check_choice(o, "norm", norm, ("batch", "none"))
        U.check_choice(o, "init", init, U.INITS)
        self.config = dict(z_dim=z_dim, img_resolution=img_resolution, img_channels=img_channels,
                           base_channels=base_channels, c_dim=c_dim, cond=cond, info_cat_dims=cats,
                           info_cont_dim=info_cont_dim, norm=norm, init=init)
        self.z_dim, self.img_resolution, self.img_channels, self.c_dim = z_dim, img_resolution, img_channels, c_dim
        self.info_cat_dims, self.info_cont_dim = tuple(cats), info_cont_dim
        self.code_dim = sum(cats) + info_cont_dim
        self.input_dim = z_dim + c_dim + self.code_dim

        def ch(r: int) -> int:
            return base_channels * img_resolution // (2 * r)

        layers = [U.ConvNormAct(self.input_dim, ch(4), 4, 1, 0, transposed=True, norm=norm, act="relu")]
        r = 4
        while 2 * r < img_resolution:
            layers.append(U.ConvNormAct(ch(r), ch(2 * r), 4, 2, 1, transposed=True, norm=norm, act="relu"))
            r *= 2
        layers.append(U.ConvNormAct(ch(r), img_channels, 4, 2, 1, transposed=True, norm="none", act="tanh"))
        self.layers = nn.Sequential(*layers)
        U.init_weights(self, init)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DCGANGenerator":
        """``"tiny"`` (tests), ``"32px"`` or ``"64px"`` (the paper's); keyword arguments override."""
        return _preset(cls, name, overrides)

    def sample_codes(self, n: int, generator: Optional[torch.Generator] = None,
                     device: Optional[torch.device] = None) -> InfoCodes:
        """InfoGAN's code prior: each categorical code uniform over its categories, continuous codes
        uniform in [-1, 1]. Drawn from ``generator`` (on its device), then moved to ``device``."""
        gdev = generator.device if generator is not None else device
        cat = cont = None
        if self.info_cat_dims:
            cat = torch.stack([torch.randint(k, (n,), generator=generator, device=gdev) for k in self.info_cat_dims],
                              dim=1).to(device)
        if self.info_cont_dim:
            cont = (torch.rand(n, self.info_cont_dim, generator=generator, device=gdev) * 2 - 1).to(device)
        return InfoCodes(cat, cont)

    def encode_codes(self, codes, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """InfoGAN codes -> the ``(N, code_dim)`` block appended to z: :class:`InfoCodes` / a ``(cat, cont)``
        pair (categorical codes one-hot encoded), or an already encoded ``(N, code_dim)`` float tensor."""
        o = "DCGANGenerator"
        if codes is None:
            raise ValueError(f"{o}: this generator has InfoGAN codes (info_cat_dims={list(self.info_cat_dims)}, "
                             f"info_cont_dim={self.info_cont_dim}); pass codes (see sample_codes)")
        if isinstance(codes, torch.Tensor):
            if not codes.is_floating_point() or tuple(codes.shape) != (n, self.code_dim):
                raise ValueError(f"{o}: encoded codes must be a float tensor of shape (N, code_dim) = "
                                 f"({n}, {self.code_dim}), got {tuple(codes.shape)} ({codes.dtype})")
            return codes.to(dtype)
        if not isinstance(codes, tuple) or len(codes) != 2:
            raise TypeError(f"{o}: codes must be InfoCodes(cat, cont), a (cat, cont) pair or an encoded tensor, got "
                            f"{type(codes).__name__}")
        cat, cont = codes
        parts = []
        if self.info_cat_dims:
            k = len(self.info_cat_dims)
            if not isinstance(cat, torch.Tensor) or cat.is_floating_point() or tuple(cat.shape) != (n, k):
                raise ValueError(f"{o}: codes.cat must be an integer tensor of shape ({n}, {k}), got "
                                 f"{tuple(cat.shape) if isinstance(cat, torch.Tensor) else cat!r}")
            for i, kk in enumerate(self.info_cat_dims):
                col = cat[:, i]
                if col.device.type == "cpu" and n and bool(((col < 0) | (col >= kk)).any()):
                    raise ValueError(f"{o}: codes.cat[:, {i}] must be in [0, {kk})")
                parts.append(nn.functional.one_hot(col.long(), kk).to(dtype))
        elif cat is not None:
            raise ValueError(f"{o}: categorical codes given to a generator without them (info_cat_dims=())")
        if self.info_cont_dim:
            if not isinstance(cont, torch.Tensor) or not cont.is_floating_point() or \
                    tuple(cont.shape) != (n, self.info_cont_dim):
                raise ValueError(f"{o}: codes.cont must be a float tensor of shape ({n}, {self.info_cont_dim}), got "
                                 f"{tuple(cont.shape) if isinstance(cont, torch.Tensor) else cont!r}")
            parts.append(cont.to(dtype))
        elif cont is not None:
            raise ValueError(f"{o}: continuous codes given to a generator without them (info_cont_dim=0)")
        out = torch.cat(parts, dim=1)
        if out.device != device:
            raise ValueError(f"{o}: codes are on {out.device} but z is on {device}")
        return out

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None, codes: CodesLike = None) -> torch.Tensor:
        """z ``(N, z_dim)``; c ``(N,)`` class indices or ``(N, c_dim)`` (conditional models); codes
        (InfoGAN models, see :meth:`encode_codes`). Returns ``(N, img_channels, R, R)`` in [-1, 1]."""
        o = "DCGANGenerator"
        if not isinstance(z, torch.Tensor) or not z.is_floating_point() or z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"{o}: z must be a float tensor (N, z_dim) = (N, {self.z_dim}), got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        n = z.shape[0]
        parts = [z]
        if self.c_dim:
            parts.append(U.labels_to_onehot(o, c, self.c_dim, n, z.dtype, z.device))
        elif c is not None:
            raise ValueError(f"{o}: class labels given to an unconditional generator (c_dim=0)")
        if self.code_dim:
            parts.append(self.encode_codes(codes, n, z.dtype, z.device))
        elif codes is not None:
            raise ValueError(f"{o}: InfoGAN codes given to a generator without codes")
        x = torch.cat(parts, dim=1) if len(parts) > 1 else z
        return self.layers(x[:, :, None, None])


# ----------------------------------------------------------------------------- discriminator
class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator / WGAN critic with optional conditioning and heads (see the module docstring).

    ``D(x, c=None)`` returns the logits ``(N, 1)``, or a :class:`DiscriminatorOutput` when the model has
    an ACGAN (``aux_classes``) or InfoGAN (``info_cat_dims`` / ``info_cont_dim``) head.

    Args:
        img_resolution: input size, a power of two >= 8. img_channels: 3 or 1.
        base_channels: channels of the first conv (doubling at each halving).
        c_dim: number of classes (0: unconditional). cond: ``"projection"`` (Miyato & Koyama:
            ``logit = psi(phi(x)) + <embed(y), phi(x)>``), ``"concat"`` (one-hot label maps appended
            to the input channels, cGAN) or ``"none"`` (only valid with c_dim=0).
        norm: after every conv but the first: ``"batch"`` (DCGAN), ``"layer"`` (WGAN-GP's critic),
            ``"instance"`` or ``"none"``. Not ``"batch"`` under a gradient penalty (module docstring).
        spectral_norm: spectral normalisation of every conv, linear and embedding weight (SNGAN).
        aux_classes: ACGAN's auxiliary classifier over this many classes (0: none).
        info_cat_dims, info_cont_dim: InfoGAN's Q head (sharing the trunk): categorical logits per code
            and a Gaussian mean / log-std per continuous code.
        minibatch_std: append the minibatch standard deviation (Karras et al. 2018) to the 4x4 features.
        self_attention_at: a SAGAN self-attention block on the feature maps of this resolution (one of
            img_resolution / 2, ..., 4), or None.
        out: ``"logit"`` (raw logits, what fastgen.gan's losses take) or ``"sigmoid"`` (probabilities,
            the original DCGAN output).
        init: ``"dcgan"`` or ``"default"`` (as the generator).
    """

    def __init__(self, *, img_resolution: int = 64, img_channels: int = 3, base_channels: int = 64, c_dim: int = 0,
                 cond: str = "projection", norm: str = "batch", spectral_norm: bool = False, aux_classes: int = 0,
                 info_cat_dims: Sequence[int] = (), info_cont_dim: int = 0, minibatch_std: bool = False,
                 self_attention_at: Optional[int] = None, out: str = "logit", init: str = "dcgan"):
        super().__init__()
        o = "DCGANDiscriminator"
        U.check_pow2(o, "img_resolution", img_resolution, 8)
        U.check_int(o, "img_channels", img_channels)
        U.check_int(o, "base_channels", base_channels)
        U.check_int(o, "c_dim", c_dim, 0)
        U.check_choice(o, "cond", cond, ("projection", "concat", "none"))
        if c_dim and cond == "none":
            raise ValueError(f"{o}: c_dim = {c_dim} needs cond='projection' or 'concat' (cond='none' is for "
                             "unconditional models; an ACGAN discriminator uses aux_classes)")
        U.check_choice(o, "norm", norm, U.NORMS)
        U.check_bool(o, "spectral_norm", spectral_norm)
        U.check_int(o, "aux_classes", aux_classes, 0)
        if aux_classes == 1:
            raise ValueError(f"{o}: aux_classes must be 0 (no ACGAN head) or >= 2, got 1")
        cats, info_cont_dim = _info_args(o, info_cat_dims, info_cont_dim)
        U.check_bool(o, "minibatch_std", minibatch_std)
        feature_sizes = [img_resolution >> i for i in range(1, U.log2(img_resolution) - 1)]  # R/2 ... 4
        if self_attention_at is not None and (isinstance(self_attention_at, bool) or
                                              self_attention_at not in feature_sizes):
            raise ValueError(f"{o}: self_attention_at must be None or a feature-map resolution in {feature_sizes}, "
                             f"got {self_attention_at!r}")
        U.check_choice(o, "out", out, ("logit", "sigmoid"))
        U.check_choice(o, "init", init, U.INITS)
        self.config = dict(img_resolution=img_resolution, img_channels=img_channels, base_channels=base_channels,
                           c_dim=c_dim, cond=cond, norm=norm, spectral_norm=spectral_norm, aux_classes=aux_classes,
                           info_cat_dims=cats, info_cont_dim=info_cont_dim, minibatch_std=minibatch_std,
                           self_attention_at=self_attention_at, out=out, init=init)
        self.img_resolution, self.img_channels, self.c_dim = img_resolution, img_channels, c_dim
        self.cond = cond if c_dim else "none"
        self.norm, self.out_kind, self.aux_classes = norm, out, aux_classes
        self.info_cat_dims, self.info_cont_dim = tuple(cats), info_cont_dim
        self.has_heads = bool(aux_classes or cats or info_cont_dim)

        in_ch = img_channels + (c_dim if self.cond == "concat" else 0)
        layers, ch = [], base_channels
        layers.append(U.ConvNormAct(in_ch, ch, 4, 2, 1, norm="none", act="lrelu"))
        r = img_resolution // 2
        if r == self_attention_at:
            layers.append(SelfAttention2d(ch))
        while r > 4:
            layers.append(U.ConvNormAct(ch, 2 * ch, 4, 2, 1, norm=norm, act="lrelu"))
            ch, r = 2 * ch, r // 2
            if r == self_attention_at:
                layers.append(SelfAttention2d(ch))
        self.trunk = nn.Sequential(*layers)
        self.mbstd = MinibatchStdDev(4, 1) if minibatch_std else None
        self.feature_dim = (ch + (1 if minibatch_std else 0)) * 16
        f = self.feature_dim
        self.head = nn.Linear(f, 1)  # psi: DCGAN's last 4x4 "valid" conv
        self.embed = nn.Embedding(c_dim, f) if self.cond == "projection" else None
        self.aux = nn.Linear(f, aux_classes) if aux_classes else None
        if cats or info_cont_dim:  # InfoGAN's Q: one hidden layer on the shared features
            self.q_hidden = nn.Linear(f, ch, bias=False)
            self.q_act = BiasAct(ch, "lrelu", alpha=0.2, gain=1.0)  # its bias + lrelu, fused
            self.q_out = nn.Linear(ch, sum(cats) + 2 * info_cont_dim)
        else:
            self.q_hidden = self.q_act = self.q_out = None
        U.init_weights(self, init)
        if spectral_norm:
            U.add_spectral_norm(self)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DCGANDiscriminator":
        """The discriminator matching :meth:`DCGANGenerator.from_preset` ``name``."""
        return _preset(cls, name, overrides)

    def _check(self, x: torch.Tensor, c: Optional[torch.Tensor]) -> None:
        o = "DCGANDiscriminator"
        U.check_images(o, "x", x, self.img_channels, size=self.img_resolution)
        if self.c_dim:
            U.check_labels(o, c, self.c_dim, x.shape[0], x.device)
        elif c is not None:
            raise ValueError(f"{o}: class labels given to an unconditional discriminator (c_dim=0)")
        if self.norm == "batch":
            U.warn_batchnorm_penalty(self, x, o)

    def _features(self, x: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        if self.cond == "concat":
            y = c.to(x.dtype) if c.is_floating_point() else nn.functional.one_hot(c.long(), self.c_dim).to(x.dtype)
            x = torch.cat([x, y[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])], dim=1)
        h = self.trunk(x)
        if self.mbstd is not None:
            h = self.mbstd(h)
        return h.flatten(1)

    def features(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        """phi(x): the flattened 4x4 features ``(N, feature_dim)`` the logit and the heads are computed from
        (the labels enter only with cond='concat', but a conditional model always wants them)."""
        self._check(x, c)
        return self._features(x, c)

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, DiscriminatorOutput]:
        """x ``(N, img_channels, R, R)``; c ``(N,)`` class indices or ``(N, c_dim)`` floats for a conditional
        model. Returns ``(N, 1)`` logits, or a :class:`DiscriminatorOutput` with heads."""
        self._check(x, c)
        phi = self._features(x, c)
        logits = self.head(phi)
        if self.embed is not None:  # projection: <embed(y), phi(x)>
            e = self.embed(c.long()) if not c.is_floating_point() else c.to(phi.dtype) @ self.embed.weight
            logits = logits + (e * phi).sum(dim=1, keepdim=True)
        if self.out_kind == "sigmoid":
            logits = torch.sigmoid(logits)
        if not self.has_heads:
            return logits
        class_logits = self.aux(phi) if self.aux is not None else None
        info_logits, mean, log_std = (), None, None
        if self.q_out is not None:
            q = self.q_out(self.q_act(self.q_hidden(phi)))
            k = sum(self.info_cat_dims)
            info_logits = tuple(q[:, :k].split(list(self.info_cat_dims), dim=1)) if k else ()
            if self.info_cont_dim:
                mean, log_std = q[:, k:].chunk(2, dim=1)
        return DiscriminatorOutput(logits, class_logits, info_logits, mean, log_std)
