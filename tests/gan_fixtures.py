"""A small StyleGAN2 GAN trainer shared by tests/test_train_gan.py and its torchrun worker.

Run as a script under torchrun (``python -m torch.distributed.run --nproc_per_node=2
tests/gan_fixtures.py OUT_DIR STEPS``) it trains the same small models data-parallel and process 0
writes the parameters, EMA weights and per-step global losses to ``OUT_DIR``.

The models have no synthesis noise inputs and no minibatch-stddev layer: those depend on each
process's own RNG stream and batch, so only without them do N processes equal one exactly.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from fastgen.demo import make_dataset
from fastgen.gan import StyleGANTraining
from fastgen.models import Discriminator, Generator
from fastgen.train import GANTrainer, init_distributed
from fastgen.train import distributed as D

SIZE = 8
CFG = dict(img_resolution=SIZE, channel_base=64, channel_max=8, c_dim=4)


def small_dataset(count: int = 24):
    return torch.utils.data.TensorDataset(make_dataset(SIZE, count), torch.arange(count) % 4)


def small_gan_trainer(*, model_seed: int = 0, ddp_safe: bool = True, **overrides) -> GANTrainer:
    torch.manual_seed(model_seed)
    G = Generator(z_dim=16, w_dim=16, mapping_layers=2, use_noise=not ddp_safe, **CFG)
    D_ = Discriminator(mbstd_num_channels=0 if ddp_safe else 1, **CFG)
    recipe = StyleGANTraining(G, D_, batch_size=8, r1_interval=2, pl_interval=2, ema_kimg=0.01,
                              generator=torch.Generator().manual_seed(11))
    kw = dict(batch_size=8, seed=3, log_every=0, progress=False)
    kw.update(overrides)
    return GANTrainer(recipe, small_dataset(), **kw)


def gan_tensors(tr: GANTrainer) -> dict:
    r = tr.recipe
    out = {f"{name}/{k}": v.detach().clone() for name, m in r.models().items() for k, v in m.state_dict().items()}
    out.update({f"ema/{k}": v.detach().clone() for k, v in r.ema.module.state_dict().items()})
    out["pl_mean"] = r.pl.pl_mean.detach().clone()
    return out


def gan_grads(tr: GANTrainer) -> dict:
    """The gradients of each network's last phase of the step (all-reduced in a data-parallel run)."""
    return {f"{name}/{k}": p.grad.detach().clone() for name, m in tr.recipe.models().items()
            for k, p in m.named_parameters() if p.grad is not None}


def _worker(out_dir: str, steps: int) -> None:
    from safetensors.torch import save_file

    info = init_distributed()
    assert info.world_size == 2, info
    tr = small_gan_trainer(model_seed=info.rank)  # must start from process 0's networks
    losses = []
    for i in range(steps):
        out = tr.step()
        losses.append({k: float(D.all_reduce_mean(v)) for k, v in sorted(out.items())})
        if i == 0 and info.is_main:
            tensors = {**gan_tensors(tr), **{f"grad/{k}": v for k, v in gan_grads(tr).items()}}
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(Path(out_dir) / "ddp_step1.safetensors"))
    if info.is_main:
        (Path(out_dir) / "ddp_losses.json").write_text(json.dumps(losses))
    torch.distributed.barrier()


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see train_fixtures.py: skip a teardown that can abort under load
