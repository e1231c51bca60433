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

Why the brightest frame: the darker frames are brought up to the clip's best exposed one, and putting the light
back only darkens (gains <= 1), so the decoded edit does not clip there. Normalised to the clip's mean light
instead, or to its first frame, the clip stays darker than at its best, and small-world edits failed that had not
(a flickering star, fast inversion: 0.94 of frames recoloured without normalisation, 0.25 at the mean light, 0.44
at the first frame's, 1.00 at the brightest frame's; BENCHMARKS.md).

Light that differs across the frame (a passing shadow, a spotlight) is not a gain and stays in the clip. On the
small world's evenly lit clips the estimate is flat within about 3% (a moving object over texture, a pan); on its
drifting and flickering clips it follows the true light from frame to frame within about 4%.
"""
from __future__ import annotations

import torch

from .errors import VP2PInputError

# Medians below this (0..1 frames) count as this, so a black frame gets a finite gain rather than 0.
DARKEST_MEDIAN = 1.0 / 255.0


def _check_frames(frames: torch.Tensor, what: str) -> None:
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise VP2PInputError(f"{what}: expected RGB frames [frames, height, width, 3], got {shape}")


def estimate_light(frames: torch.Tensor) -> torch.Tensor:
    """The light's RGB gain per frame [F, 3] (float32, in (0, 1]), relative to the clip's brightest frame of each
    channel: each frame's median of each channel over the largest of those medians across the frames. ``frames``
    [F, H, W, 3] in 0..1."""
    _check_frames(frames, "frames")
    medians = frames.detach().float().flatten(1, 2).median(dim=1).values.clamp_min(DARKEST_MEDIAN)  # [F, 3]
    return (medians / medians.max(dim=0, keepdim=True).values).cpu()


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
