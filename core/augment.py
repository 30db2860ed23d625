"""Training augmentation: random crops of the zero-padded image and horizontal flips.

Used by the trainer on every batch and by the attacks (which augment poisons the way the
victim will). Works on any dtype (the trainer crops uint8 batches before converting them to
float, a quarter of the memory traffic) and on any device (the generator must live on the
tensor's device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENT_MODES = ("none", "crop", "crop-flip")


def resolve_augment(mode: str, n_channels: int) -> str:
    """The augmentation for ``mode``: 'auto' becomes 'crop-flip' for colour, 'crop' for grey.

    Parameters
    ----------
    mode : {'auto', 'none', 'crop', 'crop-flip'}
    n_channels : 1 for grey images, 3 for colour

    Returns
    -------
    str, one of {'none', 'crop', 'crop-flip'}
    """
    if mode != "auto":
        return mode
    # Digits are not mirror-symmetric; natural colour images are.
    return "crop-flip" if n_channels == 3 else "crop"


def augment_batch(x: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding of height/8, at least 1) and, for 'crop-flip', horizontal flips.

    Parameters
    ----------
    x : tensor of shape (batch, channels, height, width), any dtype, any memory format
    mode : {'none', 'crop', 'crop-flip'}
    gen : generator on ``x.device``; draws the row shifts, the column shifts, then the flips

    Returns
    -------
    tensor of shape (batch, channels, height, width), laid out channels-last (what the
    convolutions want); ``x`` itself for 'none'. Differentiable with respect to ``x``.
    """
    if mode == "none":
        return x
    b, c, h, w = x.shape
    pad = max(1, h // 8)
    dev = x.device
    # Gather in (B, H, W, C) order so that the result is channels-last without another copy.
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]
    out = padded[torch.arange(b, device=dev)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if mode == "crop-flip":
        flip = torch.rand(b, generator=gen, device=dev) < 0.5
        out[flip] = out[flip].flip(3)
    return out
