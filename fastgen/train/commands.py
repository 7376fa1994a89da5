"""``fastgen train ddpm|ldm|stylegan|vae|...`` and ``fastgen sample``: the trainers and the samplers from the command line.

    fastgen train ddpm --data shapes --size 16 --steps 2000 --out runs/ddpm
    fastgen train ldm --vae runs/vae --data shapes --steps 5000 --out runs/ldm        # latent diffusion
    fastgen train stylegan --data shapes --size 32 --steps 5000 --out runs/stylegan
    fastgen train dcgan|wgan-gp|pix2pix|cyclegan --size 32 --steps 2000               # the GAN zoo
    fastgen train vae --data shapes --size 32 --steps 5000 --out runs/vae            # a VAE (shapes32 preset)
    fastgen train vae --adversarial --out runs/vaegan                                # VAE-GAN (PatchGAN, L1 + KL + adv)
    torchrun --nproc_per_node=2 -m fastgen train ddpm --data shapes --out runs/ddpm   # data parallel
    fastgen train ddpm --out runs/ddpm --resume --steps 1000                           # 1000 more steps
    fastgen sample --checkpoint runs/ddpm --sampler ddim --steps 50 --guidance 3 --out grid.png
    fastgen sample --checkpoint runs/stylegan --truncation 0.7 --out grid.png              # a GAN checkpoint
    fastgen sample --checkpoint runs/ldm --sampler ddim --steps 50 --guidance 3 --out grid.png  # latent diffusion
    fastgen sample --checkpoint runs/vae --num-images 16 --out grid.png                    # VAE prior samples

Bad settings, a missing data folder or a bad checkpoint print one line and exit non-zero.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

SAMPLERS = ("ddpm", "ddim", "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_3m")
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, ImportError, NotADirectoryError)


def _device(name):
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:  # torch lists every device type it knows; cpu / cuda are what fastgen runs on
        raise ValueError(f"--device {name}: not a device name (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available")
    return dev


def _fail(command: str, exc: BaseException) -> int:
    msg = " ".join(str(exc).split())  # one line (load_state_dict's messages span many)
    if len(msg) > 400:
        msg = msg[:400] + " ..."
    print(f"fastgen {command}: error: {msg}", file=sys.stderr)
    return 1


def _load_for_sampling(args, path: Path, device):
    """``("gan", generator)``, ``("vae", VAE)`` (VAE and VAE-GAN checkpoints), ``("latent_diffusion",
    LatentDiffusion)`` or ``("diffusion", GaussianDiffusion)``
    from a checkpoint file; a checkpoint that reads but does not rebuild (missing entries, tensors
    that do not fit the recorded network) is a ValueError naming ``--checkpoint``."""
    from . import checkpoint as ckpt
    from . import load_diffusion, load_generator, load_latent_diffusion, load_vae

    try:
        meta = ckpt.load_checkpoint(path)[1]
        kind = meta.get("kind")
        if kind == "vae" or (kind == "gan" and (meta.get("config") or {}).get("recipe") == "vaegan"):
            return "vae", load_vae(path, ema=not args.no_ema, device=device)
        if kind == "gan":
            return "gan", load_generator(path, ema=not args.no_ema, device=device)
        if kind == "latent_diffusion":
            return kind, load_latent_diffusion(path, ema=not args.no_ema, device=device)
        return "diffusion", load_diffusion(path, ema=not args.no_ema, device=device)
    except (KeyError, RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(f"--checkpoint {args.checkpoint}: {str(path)!r} is not a usable fastgen checkpoint "
                         f"({type(exc).__name__}: {exc})") from exc


def cmd_train(args: argparse.Namespace) -> int:
    if args.model == "stylegan":
        return cmd_train_stylegan(args)
    if args.model in ZOO:
        return cmd_train_zoo(args)
    if args.model == "ldm":
        return cmd_train_ldm(args)
    if args.model == "vae":
        return cmd_train_vae(args)
    return cmd_train_ddpm(args)


ZOO = ("dcgan", "wgan-gp", "pix2pix", "cyclegan")


def _zoo_recipe(args, data, device):
    """The recipe of a GAN-zoo model for ``fastgen train MODEL`` (see the parser's help)."""
    from ..gan import CycleGANTraining, GANTraining, Pix2PixTraining
    from ..models import DCGANDiscriminator, DCGANGenerator, PatchGANDiscriminator, ResnetGenerator, UNetGenerator

    size, w = args.size, args.base_channels
    ema = args.ema_decay if args.ema_decay > 0 else None
    if args.model in ("dcgan", "wgan-gp"):
        c_dim = 0 if args.unconditional else (getattr(data, "num_classes", None) or 0)
        ch = data[0][0].shape[0]
        G = DCGANGenerator(z_dim=args.z_dim, img_resolution=size, img_channels=ch, base_channels=w, c_dim=c_dim)
        if args.model == "dcgan":
            D = DCGANDiscriminator(img_resolution=size, img_channels=ch, base_channels=w, c_dim=c_dim,
                                   cond="projection" if c_dim else "none")
            kw = dict(loss="nonsaturating", g_lr=args.lr, d_lr=args.lr, betas=(0.5, 0.999))
        else:
            D = DCGANDiscriminator(img_resolution=size, img_channels=ch, base_channels=w, c_dim=c_dim,
                                   cond="projection" if c_dim else "none", norm="layer")
            kw = dict(loss="wasserstein", penalty="wgan-gp", penalty_weight=10.0, d_steps=args.d_steps,
                      g_lr=args.lr, d_lr=args.lr, betas=(0.0, 0.9))
        return GANTraining(G.to(device), D.to(device), batch_size=args.batch_size, ema_decay=ema, bf16=args.bf16,
                           generator=torch.Generator().manual_seed(args.seed), **kw)
    ca, cb = data.channels_a, data.channels_b
    n_layers = 3 if size >= 64 else (2 if size >= 32 else 1)  # the 70x70 PatchGAN from 64 px up
    if args.model == "pix2pix":
        G = UNetGenerator(in_channels=ca, out_channels=cb, img_resolution=size, base_channels=w)
        D = PatchGANDiscriminator(in_channels=ca + cb, base_channels=w, n_layers=n_layers)
        return Pix2PixTraining(G.to(device), D.to(device), batch_size=args.batch_size, lr=args.lr, ema_decay=ema,
                               bf16=args.bf16, generator=torch.Generator().manual_seed(args.seed))
    mk = lambda i, o: ResnetGenerator(in_channels=i, out_channels=o, base_channels=w, n_blocks=args.n_blocks)  # noqa: E731
    md = lambda c: PatchGANDiscriminator(in_channels=c, base_channels=w, norm="instance", n_layers=n_layers)  # noqa: E731
    return CycleGANTraining(mk(ca, cb).to(device), mk(cb, ca).to(device), md(ca).to(device), md(cb).to(device),
                            batch_size=args.batch_size, lr=args.lr, lambda_identity=0.5 if ca == cb else 0.0,
                            bf16=args.bf16, generator=torch.Generator().manual_seed(args.seed))


def cmd_train_zoo(args: argparse.Namespace) -> int:
    from ..data import load_dataset, load_translation_dataset
    from . import GANTrainer, init_distributed
    from .distributed import shutdown

    try:
        device = _device(args.device)
        info = init_distributed(device=device)
        if device.type == "cuda" and info.enabled:
            device = torch.device("cuda", info.local_rank)
        translation = args.model in ("pix2pix", "cyclegan")
        data_name = args.data or ("shapes-edges" if args.model == "pix2pix" else
                                  "shapes-inverted" if args.model == "cyclegan" else "shapes")
        data = (load_translation_dataset(data_name, args.size, paired=args.model == "pix2pix") if translation
                else load_dataset(data_name, args.size))
        torch.manual_seed(args.seed)
        recipe = _zoo_recipe(args, data, device)
        trainer = GANTrainer(recipe, data, batch_size=args.batch_size, seed=args.seed, out_dir=args.out,
                             log_every=args.log_every, sample_every=args.sample_every,
                             checkpoint_every=args.checkpoint_every, num_workers=args.num_workers,
                             progress=not args.no_progress)
        _resume(trainer, args, info)
        summary = trainer.train(args.steps)
        if info.is_main:
            grid = trainer.save_samples(Path(args.out) / "samples" / "final.png")
            losses = ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if k not in ("steps", "seconds", "it_per_s"))
            print(f"trained {summary['steps']} steps ({summary['it_per_s']:.2f} it/s on {info.world_size} "
                  f"process(es)), {losses}; checkpoints in {Path(args.out) / 'checkpoints'}, samples in {grid}")
        shutdown()
    except USER_ERRORS as exc:
        return _fail("train", exc)
    return 0


def _resume(trainer, args, info) -> None:
    from . import latest_checkpoint

    if args.resume:
        src = Path(args.out) if args.resume == "auto" else Path(args.resume)
        if args.resume != "auto" or latest_checkpoint(src / "checkpoints") is not None:
            step = trainer.load_checkpoint(src)
            if info.is_main:
                print(f"resumed from step {step}", file=sys.stderr)


def cmd_train_stylegan(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..gan import StyleGANTraining
    from ..models.stylegan import Discriminator, Generator
    from . import GANTrainer, init_distributed
    from .distributed import shutdown

    try:
        device = _device(args.device)
        info = init_distributed(device=device)
        if device.type == "cuda" and info.enabled:
            device = torch.device("cuda", info.local_rank)
        data = load_dataset(args.data, args.size)
        c_dim = 0 if args.unconditional else (getattr(data, "num_classes", None) or 0)
        channels = data[0][0].shape[0]
        torch.manual_seed(args.seed)
        common = dict(img_resolution=args.size, img_channels=channels, c_dim=c_dim)
        G = Generator.from_preset(args.preset, style=args.style, **common).to(device)
        D = Discriminator.from_preset(args.preset, **common).to(device)
        recipe = StyleGANTraining(G, D, batch_size=args.batch_size, lr=args.lr, r1_gamma=args.r1_gamma,
                                  r1_interval=args.r1_interval, pl_weight=args.pl_weight,
                                  style_mixing_prob=args.mixing, ema_kimg=args.ema_kimg if args.ema_kimg > 0 else None,
                                  cond_transition=args.cond_transition if c_dim else None,
                                  generator=torch.Generator().manual_seed(args.seed))
        trainer = GANTrainer(recipe, data, batch_size=args.batch_size, seed=args.seed, out_dir=args.out,
                             log_every=args.log_every, sample_every=args.sample_every,
                             checkpoint_every=args.checkpoint_every, num_workers=args.num_workers,
                             progress=not args.no_progress)
        _resume(trainer, args, info)
        summary = trainer.train(args.steps)
        if info.is_main:
            grid = trainer.save_samples(Path(args.out) / "samples" / "final.png")
            print(f"trained {summary['steps']} steps ({summary['it_per_s']:.2f} it/s on {info.world_size} "
                  f"process(es)), D loss {summary.get('d', float('nan')):.4f}, G loss {summary.get('g', float('nan')):.4f}; "
                  f"checkpoints in {Path(args.out) / 'checkpoints'}, samples in {grid}")
        shutdown()
    except USER_ERRORS as exc:
        return _fail("train", exc)
    return 0


def _diffusion_trainer_kwargs(args, device) -> dict:
    """The DiffusionTrainer settings `fastgen train ddpm` and `fastgen train ldm` share."""
    return dict(batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                lr_schedule=args.lr_schedule, decay_steps=args.decay_steps,
                grad_clip=args.grad_clip if args.grad_clip > 0 else None,
                ema_decay=args.ema_decay if args.ema_decay > 0 else None, bf16=args.bf16, seed=args.seed,
                out_dir=args.out, log_every=args.log_every, sample_every=args.sample_every,
                checkpoint_every=args.checkpoint_every, sample_steps=args.sample_steps, guidance_scale=args.guidance,
                num_workers=args.num_workers, progress=not args.no_progress, device=device)


def cmd_train_ddpm(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..diffusion import GaussianDiffusion, make_schedule
    from ..models.unet import UNet
    from . import DiffusionTrainer, init_distributed
    from .distributed import shutdown

    try:
        device = _device(args.device)
        info = init_distributed(device=device)
        if device.type == "cuda" and info.enabled:
            device = torch.device("cuda", info.local_rank)
        data = load_dataset(args.data, args.size)
        num_classes = None if args.unconditional else getattr(data, "num_classes", None)
        torch.manual_seed(args.seed)
        model = UNet.from_preset(args.preset, image_size=args.size, in_channels=data[0][0].shape[0],
                                 num_classes=num_classes, dropout=args.dropout)
        diffusion = GaussianDiffusion(model, make_schedule(args.schedule), prediction_type=args.prediction_type,
                                      num_classes=num_classes, p_uncond=args.p_uncond)
        trainer = DiffusionTrainer(diffusion, data, **_diffusion_trainer_kwargs(args, device))
        _resume(trainer, args, info)
        summary = trainer.train(args.steps)
        if info.is_main:
            grid = trainer.save_samples(Path(args.out) / "samples" / "final.png")
            print(f"trained {summary['steps']} steps ({summary['it_per_s']:.2f} it/s on {info.world_size} "
                  f"process(es)), loss {summary['loss']:.4f}; checkpoints in {Path(args.out) / 'checkpoints'}, "
                  f"samples in {grid}")
        shutdown()
    except USER_ERRORS as exc:
        return _fail("train", exc)
    return 0


def cmd_train_vae(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..gan import VAEGANTraining
    from ..models import PatchGANDiscriminator
    from ..models.vae import VAE
    from . import GANTrainer, VAETrainer, init_distributed
    from .distributed import shutdown

    try:
        device = _device(args.device)
        info = init_distributed(device=device)
        if device.type == "cuda" and info.enabled:
            device = torch.device("cuda", info.local_rank)
        if not args.adversarial:
            for flag, value, default in (("--disc-start", args.disc_start, 0), ("--adv-weight", args.adv_weight, 0.5),
                                         ("--gan-loss", args.gan_loss, "hinge")):
                if value != default:
                    raise ValueError(f"{flag} only applies with --adversarial")
        elif args.kl_warmup_steps:
            raise ValueError("--kl-warmup-steps applies to the plain VAE (not --adversarial)")
        data = load_dataset(args.data, args.size)
        torch.manual_seed(args.seed)
        beta = args.beta if args.beta is not None else (1e-6 if args.adversarial else 1.0)
        lr = args.lr if args.lr is not None else (2e-4 if args.adversarial else 1e-3)
        vae = VAE.from_preset(args.preset, image_size=args.size, in_channels=data[0][0].shape[0],
                              likelihood=args.likelihood, beta=1.0 if args.adversarial else beta).to(device)
        ema = args.ema_decay if args.ema_decay > 0 else None
        common = dict(batch_size=args.batch_size, seed=args.seed, out_dir=args.out, log_every=args.log_every,
                      sample_every=args.sample_every, checkpoint_every=args.checkpoint_every,
                      num_workers=args.num_workers, progress=not args.no_progress)
        if args.adversarial:
            n_layers = 3 if args.size >= 64 else (2 if args.size >= 32 else 1)
            D = PatchGANDiscriminator(in_channels=vae.in_channels, base_channels=vae.config["base_channels"],
                                      n_layers=n_layers).to(device)
            recipe = VAEGANTraining(vae, D, batch_size=args.batch_size, beta_kl=beta, adv_weight=args.adv_weight,
                                    disc_start=args.disc_start, loss=args.gan_loss, lr=lr, ema_decay=ema,
                                    bf16=args.bf16, generator=torch.Generator().manual_seed(args.seed))
            trainer = GANTrainer(recipe, data, **common)
        else:
            trainer = VAETrainer(vae, data, lr=lr, grad_clip=args.grad_clip if args.grad_clip > 0 else None,
                                 ema_decay=ema, kl_warmup_steps=args.kl_warmup_steps, bf16=args.bf16,
                                 device=device, **common)
        _resume(trainer, args, info)
        summary = trainer.train(args.steps)
        if info.is_main:
            grid = trainer.save_samples(Path(args.out) / "samples" / "final.png")
            losses = ", ".join(f"{k} {v:.4f}" for k, v in summary.items()
                               if k not in ("steps", "seconds", "it_per_s", "lr", "grad_norm"))
            print(f"trained {summary['steps']} steps ({summary['it_per_s']:.2f} it/s on {info.world_size} "
                  f"process(es)), {losses}; checkpoints in {Path(args.out) / 'checkpoints'}, samples in {grid}")
        shutdown()
    except USER_ERRORS as exc:
        return _fail("train", exc)
    return 0


def _load_vae(path: str, device):
    """The autoencoder of ``--vae``: a VAE or VAE-GAN trainer checkpoint (file or run folder)."""
    from .vae import load_vae

    vae = load_vae(path)
    if not isinstance(vae, torch.nn.Module) or not hasattr(vae, "latent_channels") or \
            not hasattr(vae, "downsample_factor"):
        raise ValueError(f"--vae {path}: expected a fastgen VAE checkpoint, got a {type(vae).__name__}")
    return vae.to(device)


def cmd_train_ldm(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..diffusion import GaussianDiffusion, LatentDiffusion, make_schedule
    from ..models.unet import PRESETS, UNet
    from . import LatentDiffusionTrainer, init_distributed
    from .distributed import shutdown

    try:
        device = _device(args.device)
        info = init_distributed(device=device)
        if device.type == "cuda" and info.enabled:
            device = torch.device("cuda", info.local_rank)
        vae = _load_vae(args.vae, device)
        size = args.size or getattr(vae, "image_size", None)
        if size is None:
            raise ValueError("--size: the autoencoder does not say its image size; pass --size")
        data = load_dataset(args.data, size)
        channels = data[0][0].shape[0]
        if getattr(vae, "in_channels", channels) != channels:
            raise ValueError(f"--data: the images have {channels} channel(s) but the VAE takes {vae.in_channels}")
        factor = vae.downsample_factor
        if size % factor:
            raise ValueError(f"--size {size} is not divisible by the VAE's downsampling factor {factor}")
        num_classes = None if args.unconditional else getattr(data, "num_classes", None)
        lat_ch = vae.latent_channels
        lat_size = size // factor
        down = 2 ** (len(PRESETS[args.preset]["channel_mult"]) - 1)
        if lat_size % down:
            raise ValueError(f"--size {size}: the latents are {lat_size}x{lat_size}, which the {args.preset!r} U-Net "
                             f"cannot downsample {down}x; use a size divisible by {factor * down}")
        torch.manual_seed(args.seed)
        unet = UNet.from_preset(args.preset, image_size=lat_size, in_channels=lat_ch, num_classes=num_classes,
                                dropout=args.dropout)
        diffusion = GaussianDiffusion(unet, make_schedule(args.schedule), prediction_type=args.prediction_type,
                                      num_classes=num_classes, p_uncond=args.p_uncond)
        ldm = LatentDiffusion(vae, diffusion, latent_shape=(lat_ch, lat_size, lat_size),
                              posterior="sample" if args.sample_posterior else "mean")
        trainer = LatentDiffusionTrainer(ldm, data, scale_samples=args.scale_samples,
                                         **_diffusion_trainer_kwargs(args, device))
        _resume(trainer, args, info)
        summary = trainer.train(args.steps)
        if info.is_main:
            grid = trainer.save_samples(Path(args.out) / "samples" / "final.png")
            print(f"trained {summary['steps']} steps ({summary['it_per_s']:.2f} it/s on {info.world_size} "
                  f"process(es)), loss {summary.get('loss', float('nan')):.4f}, latent scale factor "
                  f"{float(ldm.scale_factor):.4f}; checkpoints in {Path(args.out) / 'checkpoints'}, samples in {grid}")
        shutdown()
    except USER_ERRORS as exc:
        return _fail("train", exc)
    return 0


def _class_labels(args, num_classes):
    if num_classes is not None:
        if args.class_label is not None and not 0 <= args.class_label < num_classes:
            raise ValueError(f"--class-label must be in [0, {num_classes - 1}], got {args.class_label}")
        return (torch.full((args.num_images,), args.class_label) if args.class_label is not None
                else torch.arange(args.num_images) % num_classes)
    if args.class_label is not None:
        raise ValueError("--class-label: this model is unconditional")
    return None


def _sample_ldm(args, ldm, device) -> int:
    from ..images import save_image_grid

    labels = _class_labels(args, ldm.num_classes)
    # latents are not bounded like images: the sampler never clamps them (--no-clip has no effect);
    # the decoded images are clamped to [-1, 1]
    images = ldm.sample(args.num_images, sampler=args.sampler, steps=args.steps, guidance_scale=args.guidance,
                        class_labels=labels, generator=torch.Generator(device).manual_seed(args.seed),
                        progress=not args.no_progress)
    w, h = save_image_grid(images, args.out, upscale=max(1, 64 // images.shape[-1]))
    print(f"wrote {args.out} ({w}x{h}, {args.num_images} samples, latent diffusion, {args.sampler} {args.steps} steps)")
    return 0


def _sample_vae(args, vae, device) -> int:
    from ..images import save_image_grid

    if args.class_label is not None:
        raise ValueError("--class-label: a VAE is unconditional")
    if args.truncation != 1.0:
        raise ValueError("--truncation applies to StyleGAN checkpoints; for a VAE use --temperature")
    with torch.no_grad():
        images = vae.sample(args.num_images, generator=torch.Generator(device).manual_seed(args.seed),
                            temperature=args.temperature)
    w, h = save_image_grid(images, args.out, upscale=max(1, 64 // vae.image_size))
    print(f"wrote {args.out} ({w}x{h}, {args.num_images} VAE prior samples, temperature {args.temperature})")
    return 0


def _sample_gan(args, G, device) -> int:
    from ..images import save_image_grid

    if not hasattr(G, "z_dim"):
        raise ValueError(f"--checkpoint {args.checkpoint}: {type(G).__name__} translates images (pix2pix / CycleGAN); "
                         "its sample grids are written during training (samples/), or call load_generator in Python")
    labels = None
    if G.c_dim:
        if args.class_label is not None and not 0 <= args.class_label < G.c_dim:
            raise ValueError(f"--class-label must be in [0, {G.c_dim - 1}], got {args.class_label}")
        labels = (torch.full((args.num_images,), args.class_label) if args.class_label is not None
                  else torch.arange(args.num_images) % G.c_dim).to(device)
    elif args.class_label is not None:
        raise ValueError("--class-label: this model is unconditional")
    z = torch.randn(args.num_images, G.z_dim, generator=torch.Generator().manual_seed(args.seed)).to(device)
    kw = {"truncation_psi": args.truncation} if hasattr(G, "mapping") else {}
    if args.truncation != 1.0 and not kw:
        raise ValueError(f"--truncation: {type(G).__name__} has no mapping network (StyleGAN generators only)")
    with torch.no_grad():
        images = G(z, labels, **kw)
    w, h = save_image_grid(images, args.out, upscale=max(1, 64 // G.img_resolution))
    print(f"wrote {args.out} ({w}x{h}, {args.num_images} samples, truncation psi {args.truncation})")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from . import latest_checkpoint

    try:
        device = _device(args.device)
        path = Path(args.checkpoint)
        if path.is_dir():
            path = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path) or path
            if path.is_dir():
                raise FileNotFoundError(f"--checkpoint {args.checkpoint}: no step_*.safetensors checkpoint there")
        kind, model = _load_for_sampling(args, path, device)
        if kind == "vae":
            return _sample_vae(args, model, device)
        if args.temperature != 1.0:
            raise ValueError("--temperature applies to VAE checkpoints")
        if kind == "gan":
            return _sample_gan(args, model, device)
        if kind == "latent_diffusion":
            return _sample_ldm(args, model, device)
        from ..images import save_image_grid

        diffusion = model
        shape = (args.num_images, diffusion.model.in_channels, diffusion.model.image_size, diffusion.model.image_size)
        labels = _class_labels(args, diffusion.num_classes)
        images = diffusion.sample(shape, sampler=args.sampler, steps=args.steps, guidance_scale=args.guidance,
                                  class_labels=labels, generator=torch.Generator(device).manual_seed(args.seed),
                                  progress=not args.no_progress, sampler_kwargs={"clip_sample": not args.no_clip})
        w, h = save_image_grid(images, args.out, upscale=max(1, 64 // shape[-1]))
        print(f"wrote {args.out} ({w}x{h}, {args.num_images} samples, {args.sampler} {args.steps} steps)")
    except USER_ERRORS as exc:
        return _fail("sample", exc)
    return 0


def _bounded(kind, strict: bool):
    """An argparse type: ``kind`` and > 0 (``strict``) or >= 0."""
    def parse(text):
        v = kind(text)
        if v < 0 or (strict and v == 0):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} 0, got {text}")
        return v
    return parse


def _positive(kind):
    return _bounded(kind, True)


def _non_negative(kind):
    return _bounded(kind, False)


def _run_args(p, out: str) -> None:
    """The arguments every ``fastgen train`` model shares."""
    p.add_argument("--seed", type=_non_negative(int), default=0)
    p.add_argument("--out", default=out, help=f"output folder (default {out})")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from the newest checkpoint in --out (or from the given file/folder)")
    p.add_argument("--log-every", type=_non_negative(int), default=50)
    p.add_argument("--sample-every", type=_non_negative(int), default=500)
    p.add_argument("--checkpoint-every", type=_non_negative(int), default=500)
    p.add_argument("--num-workers", type=_non_negative(int), default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")


def add_parsers(sub) -> None:
    """Register ``train`` and ``sample`` on the ``fastgen`` sub-command parser."""
    from ..models.unet import PRESETS

    p_train = sub.add_parser("train", help="train a model (torchrun-compatible)",
                             description="Train a model on the embedded dataset ('shapes'), scikit-learn's digits "
                                         "or a folder of images.")
    models = p_train.add_subparsers(dest="model", metavar="MODEL", required=True)
    p = models.add_parser("ddpm", help="a diffusion U-Net (DDPM objective, EMA, sample grids, checkpoints)")
    p.add_argument("--data", default="shapes", help="'shapes' (embedded, default), 'digits' or a folder of images")
    p.add_argument("--size", type=_positive(int), default=16, help="image size (default 16)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="U-Net preset (default tiny)")
    p.add_argument("--dropout", type=_non_negative(float), default=0.0, help="ResBlock dropout (default 0)")
    p.add_argument("--schedule", choices=("linear", "cosine", "scaled_linear", "sigmoid"), default="linear")
    p.add_argument("--prediction-type", choices=("epsilon", "sample", "v_prediction"), default="epsilon")
    p.add_argument("--unconditional", action="store_true", help="ignore the dataset's labels")
    p.add_argument("--p-uncond", type=_non_negative(float), default=0.1, help="CFG label dropout (default 0.1)")
    p.add_argument("--steps", type=_non_negative(int), default=1000, help="training steps to run (default 1000)")
    p.add_argument("--batch-size", type=_positive(int), default=64, help="global batch (default 64)")
    p.add_argument("--lr", type=_positive(float), default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--warmup-steps", type=_non_negative(int), default=100)
    p.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), default="constant",
                   help="after the warm-up: constant (default), or decay to 0 at --decay-steps")
    p.add_argument("--decay-steps", type=_positive(int), default=None,
                   help="the step (counted from the start of training, across resumes) where the lr reaches 0")
    p.add_argument("--grad-clip", type=_non_negative(float), default=1.0, help="0: no clipping (default 1)")
    p.add_argument("--ema-decay", type=_non_negative(float), default=0.999, help="0: no EMA (default 0.999)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass")
    p.add_argument("--sample-steps", type=_positive(int), default=50)
    p.add_argument("--guidance", type=_non_negative(float), default=2.0, help="CFG scale of the sample grids")
    _run_args(p, "runs/ddpm")
    p.set_defaults(func=cmd_train, subparser=p)

    q = models.add_parser("ldm", help="latent diffusion: a U-Net on the latents of a trained (frozen) VAE")
    q.add_argument("--vae", required=True, help="the VAE: a 'fastgen train vae' checkpoint file or run folder")
    q.add_argument("--data", default="shapes", help="'shapes' (embedded, default), 'digits' or a folder of images")
    q.add_argument("--size", type=_positive(int), default=None, help="image size (default: the VAE's)")
    q.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                   help="U-Net preset, built at the latent size with the latent channels (default tiny)")
    q.add_argument("--dropout", type=_non_negative(float), default=0.0, help="ResBlock dropout (default 0)")
    q.add_argument("--schedule", choices=("linear", "cosine", "scaled_linear", "sigmoid"), default="linear")
    q.add_argument("--prediction-type", choices=("epsilon", "sample", "v_prediction"), default="epsilon")
    q.add_argument("--unconditional", action="store_true",
                   help="ignore the dataset's labels (default: class-conditional on labelled data, as train ddpm)")
    q.add_argument("--p-uncond", type=_non_negative(float), default=0.1, help="CFG label dropout (default 0.1)")
    q.add_argument("--sample-posterior", action="store_true",
                   help="encode images to a posterior sample (default: the posterior mean)")
    q.add_argument("--scale-samples", type=_positive(int), default=256,
                   help="images used to estimate the latent scale factor (default 256)")
    q.add_argument("--steps", type=_non_negative(int), default=1000, help="training steps to run (default 1000)")
    q.add_argument("--batch-size", type=_positive(int), default=64, help="global batch (default 64)")
    q.add_argument("--lr", type=_positive(float), default=1e-3, help="AdamW learning rate (default 1e-3)")
    q.add_argument("--warmup-steps", type=_non_negative(int), default=100)
    q.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), default="constant")
    q.add_argument("--decay-steps", type=_positive(int), default=None)
    q.add_argument("--grad-clip", type=_non_negative(float), default=1.0, help="0: no clipping (default 1)")
    q.add_argument("--ema-decay", type=_non_negative(float), default=0.999, help="0: no EMA (default 0.999)")
    q.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass")
    q.add_argument("--sample-steps", type=_positive(int), default=50)
    q.add_argument("--guidance", type=_non_negative(float), default=2.0, help="CFG scale of the sample grids")
    _run_args(q, "runs/ldm")
    q.set_defaults(func=cmd_train, subparser=q)

    from ..models.stylegan import PRESETS as SG_PRESETS

    g = models.add_parser("stylegan", help="StyleGAN2 / StyleGAN (lazy R1, path length, style mixing, EMA)")
    g.add_argument("--data", default="shapes", help="'shapes' (embedded, default), 'digits' or a folder of images")
    g.add_argument("--size", type=_positive(int), default=32, help="image size, a power of two (default 32)")
    g.add_argument("--preset", choices=sorted(SG_PRESETS), default="32px",
                   help="network widths (default 32px; --size sets the resolution)")
    g.add_argument("--style", choices=("stylegan2", "stylegan"), default="stylegan2",
                   help="modulated convs (stylegan2, default) or AdaIN (stylegan)")
    g.add_argument("--unconditional", action="store_true", help="ignore the dataset's labels")
    g.add_argument("--steps", type=_non_negative(int), default=2000, help="training steps to run (default 2000)")
    g.add_argument("--batch-size", type=_positive(int), default=32, help="global batch (default 32)")
    g.add_argument("--lr", type=_positive(float), default=0.002, help="Adam learning rate (default 0.002)")
    g.add_argument("--r1-gamma", type=_non_negative(float), default=1.0, help="R1 weight (default 1; 0: off)")
    g.add_argument("--r1-interval", type=_positive(int), default=16, help="lazy R1 every k steps (default 16)")
    g.add_argument("--pl-weight", type=_non_negative(float), default=2.0, help="path-length weight (0: off)")
    g.add_argument("--mixing", type=_non_negative(float), default=0.9, help="style-mixing probability (0.9)")
    g.add_argument("--ema-kimg", type=_non_negative(float), default=1.0,
                   help="generator EMA half-life in thousands of images (default 1; 0: no EMA)")
    g.add_argument("--cond-transition", type=_non_negative(float), nargs=2, metavar=("START_KIMG", "END_KIMG"),
                   default=None, help="train unconditionally until START_KIMG thousand images, then fade the class "
                   "labels in by END_KIMG (against per-class mode collapse; default: labels from the start)")
    _run_args(g, "runs/stylegan")
    g.set_defaults(func=cmd_train, subparser=g)

    zoo_help = {"dcgan": "DCGAN (non-saturating loss; class-conditional projection D on labelled data)",
                "wgan-gp": "WGAN-GP (layer-norm critic, gradient penalty, --d-steps critic steps per G step)",
                "pix2pix": "pix2pix (U-Net G, 70x70 PatchGAN, L1; paired data: shapes-edges or a folder A/ B/)",
                "cyclegan": "CycleGAN (ResNet Gs, PatchGANs, cycle + identity; unpaired: shapes-inverted or A/ B/)"}
    for name in ZOO:
        z = models.add_parser(name, help=zoo_help[name])
        z.add_argument("--data", default=None,
                       help="'shapes' / 'digits' / a folder (dcgan, wgan-gp; default shapes), 'shapes-edges' (pix2pix "
                            "default), 'shapes-inverted' (cyclegan default) or a folder with A/ and B/")
        z.add_argument("--size", type=_positive(int), default=32, help="image size, a power of two (default 32)")
        z.add_argument("--base-channels", type=_positive(int), default=32, help="network width (default 32)")
        z.add_argument("--steps", type=_non_negative(int), default=2000, help="training steps to run (default 2000)")
        z.add_argument("--batch-size", type=_positive(int), default=32, help="global batch (default 32)")
        z.add_argument("--lr", type=_positive(float), default=2e-4, help="Adam learning rate (default 2e-4)")
        z.add_argument("--ema-decay", type=_non_negative(float), default=0.0, help="EMA of G (default 0: none)")
        z.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward passes")
        if name in ("dcgan", "wgan-gp"):
            z.add_argument("--z-dim", type=_positive(int), default=100)
            z.add_argument("--unconditional", action="store_true", help="ignore the dataset's labels")
        if name == "wgan-gp":
            z.add_argument("--d-steps", type=_positive(int), default=5, help="critic steps per G step (default 5)")
        if name == "cyclegan":
            z.add_argument("--n-blocks", type=_positive(int), default=6, help="ResNet blocks (default 6)")
        _run_args(z, f"runs/{name}")
        z.set_defaults(func=cmd_train, subparser=z)

    from ..models.vae import LIKELIHOODS, PRESETS as VAE_PRESETS

    v = models.add_parser("vae", help="a convolutional VAE (beta-ELBO, KL warm-up, EMA); --adversarial: VAE-GAN")
    v.add_argument("--data", default="shapes", help="'shapes' (embedded, default), 'digits' or a folder of images")
    v.add_argument("--size", type=_positive(int), default=32, help="image size (default 32)")
    v.add_argument("--preset", choices=sorted(VAE_PRESETS), default="shapes32",
                   help="network widths (default shapes32; --size sets the resolution)")
    v.add_argument("--likelihood", choices=LIKELIHOODS, default="gaussian",
                   help="decoder likelihood (default gaussian, with a learned sigma_x)")
    v.add_argument("--beta", type=_non_negative(float), default=None,
                   help="KL weight: beta of the beta-ELBO (default 1); with --adversarial the weight of the "
                        "per-dimension KL (default 1e-6, latent diffusion's)")
    v.add_argument("--kl-warmup-steps", type=_non_negative(int), default=0,
                   help="ramp beta linearly over this many steps (default 0: none)")
    v.add_argument("--adversarial", action="store_true",
                   help="train the VAE-GAN (PatchGAN discriminator, L1 + KL + adversarial loss)")
    v.add_argument("--disc-start", type=_non_negative(int), default=0,
                   help="--adversarial: the step from which the discriminator trains (default 0)")
    v.add_argument("--adv-weight", type=_non_negative(float), default=0.5,
                   help="--adversarial: weight of the adversarial term (x the adaptive weight; default 0.5)")
    v.add_argument("--gan-loss", choices=("hinge", "nonsaturating", "lsgan"), default="hinge",
                   help="--adversarial: the GAN loss (default hinge)")
    v.add_argument("--steps", type=_non_negative(int), default=2000, help="training steps to run (default 2000)")
    v.add_argument("--batch-size", type=_positive(int), default=32, help="global batch (default 32)")
    v.add_argument("--lr", type=_positive(float), default=None,
                   help="learning rate: AdamW of the VAE (default 1e-3) / Adam of the VAE-GAN (default 2e-4)")
    v.add_argument("--grad-clip", type=_non_negative(float), default=0.0, help="0: no clipping (default)")
    v.add_argument("--ema-decay", type=_non_negative(float), default=0.999, help="0: no EMA (default 0.999)")
    v.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass")
    _run_args(v, "runs/vae")
    v.set_defaults(func=cmd_train, subparser=v)

    s = sub.add_parser("sample", help="sample a PNG grid from a training checkpoint",
                       description="Sample from a 'fastgen train' checkpoint (file or run folder): diffusion, "
                                   "latent diffusion, GAN or VAE (prior samples).")
    s.add_argument("--checkpoint", required=True, help="a step_*.safetensors file or a run folder")
    s.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    s.add_argument("--steps", type=_positive(int), default=50)
    s.add_argument("--guidance", type=_non_negative(float), default=1.0, help="classifier-free guidance scale")
    s.add_argument("--num-images", type=_positive(int), default=16)
    s.add_argument("--class-label", type=int, default=None, help="one class for all (default: cycle)")
    s.add_argument("--seed", type=_non_negative(int), default=0)
    s.add_argument("--no-ema", action="store_true", help="the raw trained weights instead of the EMA")
    s.add_argument("--no-clip", action="store_true", help="do not clamp x0 predictions to [-1, 1] (pixel-space "
                   "diffusion; latent-diffusion latents are never clamped)")
    s.add_argument("--truncation", type=_non_negative(float), default=1.0,
                   help="GAN checkpoints: truncation psi around the mean w (default 1: none)")
    s.add_argument("--temperature", type=_non_negative(float), default=1.0,
                   help="VAE checkpoints: scale of the prior latents (default 1)")
    s.add_argument("--out", default="samples.png")
    s.add_argument("--device", default=None)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_sample, subparser=s)
