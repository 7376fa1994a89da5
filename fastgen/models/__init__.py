"""Generative models built on fastgen's fused blocks.

* :class:`UNet` — the DDPM / ADM diffusion U-Net (``UNET_PRESETS``).
* :class:`Generator`, :class:`Discriminator` — StyleGAN / StyleGAN2 (``STYLEGAN_PRESETS``).
* GAN model zoo: :class:`DCGANGenerator`, :class:`DCGANDiscriminator` (cGAN, ACGAN, InfoGAN, WGAN(-GP)
  critics, projection discriminator, spectral norm, SAGAN attention; ``DCGAN_PRESETS``), pix2pix's
  :class:`UNetGenerator` and :class:`PatchGANDiscriminator`, CycleGAN's :class:`ResnetGenerator` and
  :class:`ImagePool`.
* :class:`VAE` — the convolutional VAE / latent-diffusion autoencoder (``VAE_PRESETS``).
"""
from .cyclegan import ImagePool, ResnetGenerator
from .dcgan import PRESETS as DCGAN_PRESETS
from .dcgan import DCGANDiscriminator, DCGANGenerator, DiscriminatorOutput, InfoCodes
from .pix2pix import PatchGANDiscriminator, UNetGenerator
from .stylegan import PRESETS as STYLEGAN_PRESETS
from .stylegan import Discriminator, Generator
from .unet import PRESETS as UNET_PRESETS
from .unet import UNet
from .vae import PRESETS as VAE_PRESETS
from .vae import VAE

__all__ = ["UNet", "UNET_PRESETS", "Generator", "Discriminator", "STYLEGAN_PRESETS", "DCGANGenerator",
           "DCGANDiscriminator", "DiscriminatorOutput", "InfoCodes", "DCGAN_PRESETS", "UNetGenerator",
           "PatchGANDiscriminator", "ResnetGenerator", "ImagePool", "VAE", "VAE_PRESETS"]
