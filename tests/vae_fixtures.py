"""A small VAE trainer shared by tests/test_train_vae.py and its torchrun worker.

Run as a script under torchrun (``python -m torch.distributed.run --nproc_per_node=2
tests/vae_fixtures.py OUT_DIR STEPS``) it trains the same small VAE data-parallel and process 0
writes the parameters, gradients, EMA weights and per-step global losses to ``OUT_DIR``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from fastgen.data import shapes_dataset
from fastgen.models.vae import VAE
from fastgen.train import VAETrainer, init_distributed
from fastgen.train import distributed as D

SIZE = 16


def small_data(count: int = 48):
    return shapes_dataset(SIZE, count)


def small_vae_trainer(*, model_seed: int = 0, **overrides) -> VAETrainer:
    torch.manual_seed(model_seed)
    vae = VAE.from_preset("tiny")
    kw = dict(batch_size=8, lr=2e-3, ema_decay=0.9, grad_clip=None, seed=3, log_every=0, progress=False)
    kw.update(overrides)
    return VAETrainer(vae, small_data(), **kw)


def vae_tensors(tr: VAETrainer) -> dict:
    """Parameters, gradients and EMA weights, flat (for comparisons)."""
    out = {f"param/{k}": p.detach().clone() for k, p in tr.vae.named_parameters()}
    out.update({f"grad/{k}": p.grad.detach().clone() for k, p in tr.vae.named_parameters() if p.grad is not None})
    if tr.ema is not None:
        out.update({f"ema/{k}": v.detach().clone() for k, v in tr.ema.module.state_dict().items()})
    return out


def _worker(out_dir: str, steps: int) -> None:
    from safetensors.torch import save_file

    info = init_distributed()
    assert info.world_size == 2, info
    tr = small_vae_trainer(model_seed=info.rank)  # DDP must broadcast process 0's initial weights
    losses = [{k: float(D.all_reduce_mean(v)) for k, v in sorted(tr.step().items())} for _ in range(steps)]
    if info.is_main:
        out = Path(out_dir)
        save_file({k: v.contiguous() for k, v in vae_tensors(tr).items()}, str(out / "ddp.safetensors"))
        (out / "ddp_losses.json").write_text(json.dumps(losses))
    torch.distributed.barrier()


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as train_fixtures.py: skip a teardown that can abort under load
