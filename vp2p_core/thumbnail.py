"""A clip's thumbnail: its latents averaged down per frame, kept with a tuned delta and an inversion so that each
can refuse another clip of the same length and size (the frame count alone let a model tuned on one clip invert
another without a word)."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .errors import VP2PInputError

# How far (RMS, as a share of the frame's own) any frame of the latents handed back with a delta or an inversion may
# stray from the clip's it was made from before they count as another clip. Measured on the small world's clips
# (16x16 latents, so their thumbnails below are the latents themselves): the same frames through 8 bits, a bf16 VAE,
# noise of 2/255 or a 2% change of light stay within 0.028 on every frame; two clips of one scene (the same triangle
# with and without a light drift) are 0.30 apart on their closest frame; the same clip one frame later, 0.20-1.10 on
# its worst frame (ten of the suite's clips).
SAME_CLIP_TOLERANCE = 0.1
THUMBNAIL_SIZE = 16


def latent_thumbnail(latents: torch.Tensor, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """The clip's latents [F,C,h,w] averaged down to ``size`` (default at most 16x16) per frame, in float32 on the
    CPU: enough to tell one clip from another, small enough to keep with every inversion (32 KB for 8 frames)."""
    if size is None:
        size = (min(THUMBNAIL_SIZE, latents.shape[-2]), min(THUMBNAIL_SIZE, latents.shape[-1]))
    return F.adaptive_avg_pool2d(latents.detach().float().cpu(), size)


def check_thumbnail(thumbnail: Optional[torch.Tensor], leading: tuple, what: str, path, writer: str) -> None:
    """Refuse a file's stored thumbnail that is not [frames, channels, h, w] with these ``leading`` sizes (the
    frames, or the frames and channels, of its clip), or not finite."""
    if thumbnail is not None and (thumbnail.dim() != 4 or tuple(thumbnail.shape[:len(leading)]) != tuple(leading)
                                  or not bool(torch.isfinite(thumbnail).all())):
        raise VP2PInputError(f"{what}: {str(path)!r} holds a source_thumbnail of shape {tuple(thumbnail.shape)} "
                             f"(or not finite); expected finite values [frames, channels, h, w] beginning "
                             f"{tuple(leading)}, as {writer} writes")


def check_same_clip(stored: torch.Tensor, latents: torch.Tensor, what: str, made: str, whose: str,
                    remedy: str) -> None:
    """Refuse latents [F,C,h,w] of another channel count than ``stored`` (``latent_thumbnail`` of the clip a file
    was made from), or whose thumbnail strays from it by more than SAME_CLIP_TOLERANCE on any frame; the frame count
    is checked before."""
    stored = stored.float().cpu()
    if latents.shape[1] != stored.shape[1]:
        raise VP2PInputError(f"{what}: {made} latents of {stored.shape[1]} channels, but the latent has "
                             f"{latents.shape[1]}")
    apart = (latent_thumbnail(latents, size=tuple(stored.shape[-2:])) - stored).pow(2).mean(dim=(1, 2, 3)).sqrt()
    # each frame against its own RMS, but never less than half the clip's (a near-black frame)
    scale = stored.pow(2).mean(dim=(1, 2, 3)).sqrt().clamp_min(0.5 * float(stored.pow(2).mean().sqrt()))
    ratio = (apart / scale.clamp_min(1e-6)).nan_to_num(nan=math.inf)  # a NaN latent is another clip too
    worst = int(ratio.argmax())
    if float(ratio[worst]) > SAME_CLIP_TOLERANCE:
        raise VP2PInputError(
            f"{what}: {made} another clip: frame {worst} of the latent differs from {whose} by "
            f"{float(ratio[worst]):.0%} (RMS of their thumbnails; a re-encode or a slight change of light stays "
            f"within {SAME_CLIP_TOLERANCE:.0%}); {remedy}")
