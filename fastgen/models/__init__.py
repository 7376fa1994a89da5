"""Generative models built on fastgen's fused blocks."""
from .unet import PRESETS as UNET_PRESETS
from .unet import UNet

__all__ = ["UNet", "UNET_PRESETS"]
