"""``nn.Conv2d`` on :func:`fastgen.functional.conv2d`: the same module (parameters, state_dict,
``isinstance(m, nn.Conv2d)``, spectral norm and other parametrizations all unchanged) whose
gradients of every order run on the convolution library's forward / backward-data /
backward-weights kernels, which makes R1 / WGAN-GP steps through a discriminator cheaper."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.conv2d import conv2d


class Conv2d(nn.Conv2d):
    """Drop-in for ``nn.Conv2d`` (same arguments). String padding (``"same"`` / ``"valid"``) runs
    ``nn.Conv2d``'s own path; non-zero padding modes pad first, as ``nn.Conv2d`` does."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
        if isinstance(self.padding, str):
            return super()._conv_forward(input, weight, bias)
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
