"""A module-rewrite pass: single-image fast paths for Qwen-Image's VAE, the same math with less work.

The VAE (``AutoencoderKLQwenImage``) is a video VAE; an image is one frame. Two of its
building blocks spend most of their time on that case without need:

* ``QwenImageCausalConv3d`` pads the time axis with ``kernel_t - 1`` zero frames before a
  3-D convolution. On a lone first frame (no cached frames) only the last temporal slice
  of the kernel meets data, so the result is a 2-D convolution with that slice: a third of
  the multiply-adds of a 3x3x3 kernel.
* ``QwenImageRMS_norm`` normalises over channels with ``F.normalize``, whose strided
  channel reduction is slow on CPU; ``x * rsqrt(sum(x²))`` is the same quantity, several
  times faster.

Results equal the original within float rounding (tested); video inputs and cached frames
keep the original code. Applied once, when the runner loads the VAE.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# F.normalize's default eps, squared: we clamp the sum of squares instead of its root.
_EPS_SQUARED = 1e-24


def install_single_frame_paths(vae: Any) -> int:
    """Rewrites the VAE's causal convolutions and RMS norms in place; returns how many modules changed."""
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import QwenImageCausalConv3d, QwenImageRMS_norm

    changed = 0
    for module in vae.modules():
        if isinstance(module, QwenImageCausalConv3d) and _conv_qualifies(module):
            module.forward = types.MethodType(_causal_conv_forward, module)
            changed += 1
        elif isinstance(module, QwenImageRMS_norm):
            module.forward = types.MethodType(_rms_norm_forward, module)
            changed += 1
    logger.debug("VAE single-frame paths installed on %d modules", changed)
    return changed


def _conv_qualifies(conv: Any) -> bool:
    # The causal time padding must be exactly the kernel's reach back, with no temporal stride
    # or dilation: then one input frame gives one output frame from the kernel's last slice.
    kernel_t = conv.kernel_size[0]
    return conv._padding[4] == kernel_t - 1 and conv.stride[0] == 1 and conv.dilation[0] == 1 and conv.groups == 1


def _causal_conv_forward(self: Any, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
    if cache_x is not None or x.shape[2] != 1:
        return type(self).forward(self, x, cache_x)  # frames in time: the original 3-D path
    pad_w, pad_h = self._padding[0], self._padding[2]
    if self._padding[1] != pad_w or self._padding[3] != pad_h:
        return type(self).forward(self, x, cache_x)
    out = F.conv2d(x[:, :, 0], self.weight[:, :, -1], self.bias, stride=self.stride[1:], padding=(pad_h, pad_w),
                   dilation=self.dilation[1:])
    return out.unsqueeze(2)


def _rms_norm_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    # As the original: half-precision inputs are normalised in float32, then cast back.
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    dim = 1 if self.channel_first else -1
    normalized = work * torch.rsqrt(work.pow(2).sum(dim, keepdim=True).clamp_min(_EPS_SQUARED))
    return normalized.to(x.dtype) * self.scale * self.gamma + self.bias
