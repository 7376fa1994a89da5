"""Generative models built on fastgen's fused blocks."""
from .stylegan import PRESETS as STYLEGAN_PRESETS
from .stylegan import Discriminator, Generator
from .unet import PRESETS as UNET_PRESETS
from .unet import UNet

__all__ = ["UNet", "UNET_PRESETS", "Generator", "Discriminator", "STYLEGAN_PRESETS"]
