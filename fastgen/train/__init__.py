"""Training: the diffusion, latent-diffusion, GAN and VAE trainers, EMA, checkpoints (safetensors, atomic,
exact resume) and torchrun/DDP helpers."""
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .diffusion import DiffusionTrainer, StepBatches, load_diffusion
from .distributed import DistInfo, init_distributed
from .ema import EMA
from .gan import GANTrainer, load_generator
from .latent import LatentDiffusionTrainer, load_latent_diffusion
from .vae import VAETrainer, load_vae

__all__ = ["DiffusionTrainer", "load_diffusion", "GANTrainer", "load_generator", "LatentDiffusionTrainer",
           "load_latent_diffusion", "VAETrainer", "load_vae", "StepBatches", "EMA", "save_checkpoint",
           "load_checkpoint", "latest_checkpoint",
           "init_distributed", "DistInfo"]
