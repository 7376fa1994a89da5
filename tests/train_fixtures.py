"""A small diffusion trainer shared by tests/test_train.py and its torchrun worker.

Run as a script under torchrun (``python -m torch.distributed.run --nproc_per_node=2
tests/train_fixtures.py OUT_DIR STEPS``) it trains the same small model data-parallel and process
0 writes the parameters, gradients, EMA weights and per-step global losses to ``OUT_DIR``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from fastgen.demo import make_dataset
from fastgen.diffusion import GaussianDiffusion
from fastgen.models.unet import UNet
from fastgen.train import DiffusionTrainer, init_distributed
from fastgen.train import distributed as D

SIZE = 8


def small_dataset(count: int = 24):
    images = make_dataset(SIZE, count)
    return torch.utils.data.TensorDataset(images, torch.arange(count) % 4)


def small_trainer(*, model_seed: int = 0, dropout: float = 0.0, **overrides) -> DiffusionTrainer:
    torch.manual_seed(model_seed)
    model = UNet(image_size=SIZE, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(4,), num_heads=2, num_classes=4, num_groups=8, dropout=dropout)
    diffusion = GaussianDiffusion(model, num_classes=4, p_uncond=0.25)
    kw = dict(batch_size=8, lr=1e-3, ema_decay=0.9, grad_clip=1.0, warmup_steps=2, seed=3, log_every=0,
              progress=False)
    kw.update(overrides)
    return DiffusionTrainer(diffusion, small_dataset(), **kw)


def trainer_tensors(tr: DiffusionTrainer) -> dict:
    """Parameters, gradients and EMA weights, flat (for comparisons)."""
    out = {f"param/{k}": p.detach().clone() for k, p in tr.model.named_parameters()}
    out.update({f"grad/{k}": p.grad.detach().clone() for k, p in tr.model.named_parameters() if p.grad is not None})
    out.update({f"ema/{k}": v.detach().clone() for k, v in tr.ema.module.state_dict().items()})
    return out


def _worker(out_dir: str, steps: int) -> None:
    from safetensors.torch import save_file

    info = init_distributed()
    assert info.world_size == 2, info
    tr = small_trainer(model_seed=info.rank)  # DDP must broadcast process 0's initial weights (and EMA copy them)
    losses = [float(D.all_reduce_mean(tr.step())) for _ in range(steps)]
    if info.is_main:
        out = Path(out_dir)
        save_file({k: v.contiguous() for k, v in trainer_tensors(tr).items()}, str(out / "ddp.safetensors"))
        (out / "ddp_losses.json").write_text(json.dumps(losses))
    torch.distributed.barrier()  # process 0 has written the results


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]))
    # Skip the process-group and interpreter teardown: under heavy load (the full suite in CI) a
    # process sometimes aborted there after its work was done ("terminate called without an active
    # exception" from a C++ thread destructor), with or without destroy_process_group. The results
    # are written (the barrier above), so nothing is lost by exiting directly.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
