"""Light normalisation: the clip is edited as if lit throughout by its brightest frame's light, and its own light
is put back on the decoded edit.

One-shot tuning fits the model to the clip. Where the clip's exposure or white balance drifts or flickers, the
tuned model's inverted noise turns back into the clip under the source prompt but into a garbled object under the
target prompt (BENCHMARKS.md, the fourteenth moving-world run: a green -> red triangle under drifting light was
edited on 1 frame of 8, on all 8 with the light taken out first). A change of light over the whole frame is, to a
good approximation, a per-frame RGB gain. ``estimate_light`` measures it as each frame's per-channel median over
the largest of those medians across the frames (the median, not the mean: an object that moves, grows or leaves
the frame shifts the mean but hardly the median); the frames are divided by it before they are encoded
(``remove_light``) and the decoded frames multiplied by it again (``restore_light``). A composite then pastes that
over the source frames as they were lit.

Why the brightest frame (of each channel, so the reference may be a white balance no single frame had): the darker
frames are brought up to it, and putting the light back only darkens (gains <= 1), so that step never clips; taking
it out clamps a darker frame's pixels only where they would pass 1, where the estimate errs. Normalised to the
clip's mean light instead, or to its first frame, the clip stays darker than at its best, and small-world edits
failed that had not (a flickering star, fast inversion: 0.94 of frames recoloured without normalisation, 0.25 at
the mean light, 0.44 at the first frame's, 1.00 at the brightest frame's; BENCHMARKS.md). This was measured in the
small world only; on real footage a pan onto a brighter or darker scene moves the frames' medians too, and reads as
light (undone again after decoding, but the model edits the flattened clip).

Light that differs across the frame (a passing shadow, a spotlight) is not a gain and stays in the clip. On the
small world's evenly lit clips the gains stay within 3% of their mean (a ball under a pan; down to 0.95 of the
brightest frame's); on its drifting and flickering clips they follow the true light within 4.1%, up to one factor
per channel for the whole clip.
"""
from __future__ import annotations

from typing import Optional

import torch

from .errors import VP2PInputError

# The smallest gain: a frame darker than this share of the brightest (a fade to black, a frame mostly black) is
# brightened at most 1 / MIN_GAIN times, rather than have its noise blown up to white.
MIN_GAIN = 0.25


def _check_frames(frames: torch.Tensor, what: str) -> None:
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise VP2PInputError(f"{what}: expected RGB frames [frames, height, width, 3], got {shape}")


def estimate_light(frames: torch.Tensor) -> torch.Tensor:
    """The light's RGB gain per frame [F, 3] (float32, in [MIN_GAIN, 1]), relative to each channel's brightest
    frame: each frame's median of each channel over the largest of those medians across the frames. ``frames``
    [F, H, W, 3] in 0..1; a channel black on every frame gets gains of 1."""
    _check_frames(frames, "frames")
    medians = frames.detach().float().flatten(1, 2).median(dim=1).values  # [F, 3]
    brightest = medians.max(dim=0, keepdim=True).values
    gains = torch.where(brightest > 0, medians / brightest.clamp_min(1e-12), torch.ones_like(medians))
    return gains.clamp(MIN_GAIN, 1.0).cpu()


def _gains_for(frames: torch.Tensor, gains: torch.Tensor, what: str) -> torch.Tensor:
    """``gains`` [F, 3] as a [N, 1, 1, 3] factor for ``frames`` [N, H, W, 3], N a whole multiple of F (the frames
    of several target prompts, one clip after another)."""
    _check_frames(frames, what)
    if not isinstance(gains, torch.Tensor) or gains.dim() != 2 or gains.shape[1] != 3 or gains.shape[0] == 0:
        shape = tuple(gains.shape) if isinstance(gains, torch.Tensor) else type(gains).__name__
        raise VP2PInputError(f"light: expected an RGB gain per frame [frames, 3], got {shape}")
    if not bool(torch.isfinite(gains).all()) or not bool((gains > 0).all()):
        raise VP2PInputError("light: expected finite gains above 0")
    n, f = frames.shape[0], gains.shape[0]
    if n % f:
        raise VP2PInputError(f"{what}: expected the light's {f} frames or a whole multiple of them (one clip per "
                             f"target prompt), got {n} frames")
    return gains.to(device=frames.device, dtype=frames.dtype).repeat(n // f, 1)[:, None, None, :]


def remove_light(frames: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """``frames`` [F, H, W, 3] divided by the light's gain per frame, clamped to 0..1: the clip as if lit by its
    brightest frame's light throughout."""
    return (frames / _gains_for(frames, gains, "frames")).clamp(0.0, 1.0)


def restore_light(frames: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """``frames`` [N, H, W, 3] (decoded from an evenly lit clip) times the light's gain per frame, clamped to 0..1.
    N may be several clips of the light's frames, one per target prompt."""
    return (frames * _gains_for(frames, gains, "images")).clamp(0.0, 1.0)


def take_light_out(frames: torch.Tensor, normalise_light: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """What to encode, and the gains to put back: with ``normalise_light`` (``LightOptions``) the frames with their
    light taken out and ``estimate_light``'s gains; without, the frames as they are and None."""
    if not normalise_light:
        return frames, None
    gains = estimate_light(frames)
    return remove_light(frames, gains), gains


def with_light(frames: torch.Tensor, gains: Optional[torch.Tensor]) -> torch.Tensor:
    """Decoded ``frames`` with the clip's light put back (``gains`` from ``take_light_out``; None: as they are)."""
    return frames if gains is None else restore_light(frames, gains)
