"""Context windows: the UNet sees a long clip through windows of frames, fused per frame where they overlap.

Tuning, DDIM and null-text inversion and the edit all call the UNet on clips folded into the batch; on a long
clip, time per step and memory grow with the clip. Here a stage calls the UNet once per window and blends the
windows' predictions frame by frame with the fuse weights (AnimateDiff's / ComfyUI's context windows).

The core takes windows as frame-index lists plus fuse weights (``Window``), so it never imports ComfyUI: inside
ComfyUI the node layer builds them with ``comfy.context_windows``' own schedule and weight functions (see
``nodes/nodes_context.py``); outside it, ``standard_windows`` and ``fuse_weights`` below give the static and batched
schedules and the four fuse methods, written from their definitions. The uniform schedules shift their windows
from step to step by ComfyUI's rule and are left to ComfyUI.

Frame attention's anchor (frame 0 of the window: Video-P2P's ``first``, the first of Tune-A-Video's
``first_prev``) must be the clip's first frame in every window, or each window would follow its own first
frame and the clip would drift apart at every boundary. A window that does not start with frame 0 gets it
prepended as an *anchor row*: the UNet sees it (frame attention, GroupNorm and temporal attention include it)
but its output has fuse weight 0 (GroupNorm includes it only with ``group_norm`` "clip"). Cost: one frame per
window (1/16 more work at ComfyUI's default length). A looped window that wraps through frame 0 has it already:
that row moves to the front instead (temporal attention has no positional encoding, so for ``first`` this only
reorders the rows). With ``first_prev`` a window's first frame also gets its previous frame as a row of weight 0
(``with_previous_rows``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from .errors import VP2PInputError
from .options import FUSE_METHODS, ContextOptions, InflationOptions

# (num_frames, step) -> windows as lists of clip frame indices
WindowSchedule = Callable[[int, int], Sequence[Sequence[int]]]
# (window frames, num_frames) -> one fuse weight per frame of the window
WeightFunction = Callable[[Sequence[int], int], Sequence[float]]

CORE_SCHEDULES = ("standard_static", "batched")


@dataclass(frozen=True)
class Window:
    """The rows one UNet call sees: ``frames`` are clip frame indices (an anchor row first where one was
    prepended), ``weights`` their fuse weights (0 for an anchor row)."""

    frames: tuple[int, ...]
    weights: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.frames)

    def index(self, device=None) -> torch.Tensor:
        return torch.tensor(self.frames, dtype=torch.long, device=device)


def whole_clip(num_frames: int) -> list[Window]:
    """The one window that is the clip (what every stage does without context windows)."""
    return [Window(frames=tuple(range(num_frames)), weights=(1.0,) * num_frames)]


def is_whole_clip(windows: Sequence[Window], num_frames: int) -> bool:
    return len(windows) == 1 and windows[0].frames == tuple(range(num_frames))


def standard_windows(num_frames: int, length: int, overlap: int,
                     schedule: str = ContextOptions.context_schedule) -> list[list[int]]:
    """``standard_static``: windows of ``length`` frames every ``length - overlap`` frames, the last one moved back
    to end on the last frame; ``batched``: consecutive windows without overlap, the last one shorter. A clip of at
    most ``length`` frames is one window."""
    if num_frames <= length:
        return [list(range(num_frames))]
    if schedule == "batched":
        return [list(range(s, min(s + length, num_frames))) for s in range(0, num_frames, length)]
    if schedule != "standard_static":
        raise VP2PInputError(f"context_schedule: {schedule!r} shifts its windows by ComfyUI's rule and runs inside "
                             f"ComfyUI only; outside it expected one of {CORE_SCHEDULES}")
    starts = list(range(0, num_frames - length, length - overlap)) + [num_frames - length]
    return [list(range(s, s + length)) for s in dict.fromkeys(starts)]


def fuse_weights(method: str, frames: Sequence[int], num_frames: int, overlap: int) -> list[float]:
    """One weight per frame of a window (before normalising over the windows that share a frame).

    pyramid: 1, 2, ... up to the middle and back down (FreeNoise's weighted average); relative: 1 at the window's
    middle falling linearly to 0.01 at its ends, by the row's place in the window; flat: 1; overlap-linear: 1, but a
    linear ramp from ~0 to 1 over the first ``overlap`` frames (not in the clip's first window) and from 1 to ~0
    over the last ones (not in its last window)."""
    n = len(frames)
    if method == "flat":
        return [1.0] * n
    if method == "pyramid":
        half = (n + 1) // 2
        up = list(range(1, half + 1))
        return [float(v) for v in up + up[::-1][n % 2:]]
    if method == "relative":  # by the row's place in the window: a looped window that wraps past the clip's
        mid = (n - 1) / 2  # end (60..63, 0..11) has its middle in the middle too (by frame index: weights near 2)
        span = (n - 1 + 1e-2) / 2
        return [max(1e-2, 1 - abs(i - mid) / span) for i in range(n)]
    if method == "overlap-linear":
        w = [1.0] * n
        k = min(overlap, n)  # a window shorter than the overlap (batched's last) ramps over all of it
        up, down = (torch.linspace(a, b, overlap).tolist() for a, b in ((1e-37, 1.0), (1.0, 1e-37)))
        if min(frames) > 0 and k:
            w[:k] = up[:k]
        if max(frames) < num_frames - 1 and k:
            w[n - k:] = down[overlap - k:]
        return w
    raise VP2PInputError(f"fuse_method: expected one of {', '.join(FUSE_METHODS)}, got {method!r}")


@dataclass
class ContextWindows:
    """Which windows each step of a stage sees, for clips of any length.

    ``schedule`` / ``weight_function`` default to the core's own (``standard_windows``, ``fuse_weights``); the
    ComfyUI node passes ComfyUI's."""

    options: ContextOptions = ContextOptions()
    schedule: Optional[WindowSchedule] = None
    weight_function: Optional[WeightFunction] = None

    def check_clip(self, num_frames: int, what: str = "latents", steps: int = 1) -> None:
        """Refuse, before anything runs, a clip these windows cannot cover at any of a stage's ``steps`` (a host's
        schedule changes its windows from step to step: ComfyUI's uniform ones with a stride above 1 leave frames
        uncovered at some steps)."""
        o = self.options
        if num_frames < 1:
            raise VP2PInputError(f"{what}: expected at least one frame")
        if self.schedule is None and num_frames > o.context_length:
            standard_windows(num_frames, o.context_length, o.context_overlap, o.context_schedule)  # raises if not core
        if self.schedule is not None and num_frames > o.context_length:
            for step in range(max(1, int(steps))):
                try:
                    self.windows(num_frames, step)
                except VP2PInputError as e:
                    hint = "context_stride 1 or another schedule" if o.context_stride > 1 else "another schedule"
                    raise VP2PInputError(f"{e}, at step {step + 1} of {steps} for {what} (context_schedule "
                                         f"{o.context_schedule}, context_stride {o.context_stride}); try {hint}"
                                         ) from None

    def windows(self, num_frames: int, step: int = 0,
                frame_attention: str = InflationOptions.frame_attention) -> list[Window]:
        """The windows of step ``step`` over a clip of ``num_frames`` frames, anchor rows included; with the model's
        ``frame_attention`` "first_prev", previous-frame rows too (``with_previous_rows``)."""
        o = self.options
        if num_frames <= o.context_length:
            return whole_clip(num_frames)
        if self.schedule is not None:
            lists = [list(w) for w in self.schedule(num_frames, step)]
        else:
            lists = standard_windows(num_frames, o.context_length, o.context_overlap, o.context_schedule)
        covered = set()
        out = []
        for frames in lists:
            if not frames or min(frames) < 0 or max(frames) >= num_frames:
                raise VP2PInputError(f"context windows: a window {frames} is not inside a clip of {num_frames} frames")
            if self.weight_function is not None:
                weights = [float(v) for v in self.weight_function(frames, num_frames)]
            else:
                weights = fuse_weights(o.fuse_method, frames, num_frames, o.context_overlap)
            covered.update(f for f, w in zip(frames, weights) if w > 0)
            if 0 in frames[1:]:  # a looped window wraps through the first frame: that row moves to the front
                k = frames.index(0)
                frames, weights = [0] + frames[:k] + frames[k + 1:], [weights[k]] + weights[:k] + weights[k + 1:]
            elif frames[0] != 0:  # the clip's first frame anchors frame attention in every window
                frames, weights = [0] + frames, [0.0] + weights
            if frame_attention == "first_prev":
                frames, weights = with_previous_rows(frames, weights)
            out.append(Window(frames=tuple(frames), weights=tuple(weights)))
        missing = sorted(set(range(num_frames)) - covered)
        if missing:
            raise VP2PInputError(f"context windows: frames {missing[:8]} of {num_frames} are in no window "
                                 f"(context_length {o.context_length}, context_overlap {o.context_overlap})")
        return out


def windows_signature(context: Optional[ContextWindows], num_frames: int, steps: int,
                      frame_attention: str = InflationOptions.frame_attention) -> str:
    """A digest of the windows each of a stage's ``steps`` sees ("" where every step sees the whole clip): what an
    inversion records, so that a sampler under other windows can say so."""
    if context is None:
        return ""
    per_step = [context.windows(num_frames, step=i, frame_attention=frame_attention) for i in range(steps)]
    if all(is_whole_clip(ws, num_frames) for ws in per_step):
        return ""
    text = repr([[(w.frames, w.weights) for w in ws] for ws in per_step])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def with_previous_rows(frames: list[int], weights: list[float]) -> tuple[list[int], list[float]]:
    """Tune-A-Video's frame attention (``first_prev``) reads each row's previous row in the window. A frame whose
    previous frame is not the row before it (a window's first frame, 4 in (0, 4, 5, 6, 7)) gets that frame as a row
    before it with fuse weight 0, as the anchor: (0, 3, 4, 5, 6, 7). Without it, frame 4 would attend to frame 0
    twice and the window's start would lose its link to the frame before it. Cost: one row per window, and one per
    row of a strided window (context_stride above 1), whose rows never follow each other."""
    out_f, out_w = frames[:1], weights[:1]
    for f, w in zip(frames[1:], weights[1:]):
        previous = max(f - 1, 0)  # the clip's first frame is its own previous frame (a looped window's second copy)
        if out_f[-1] != previous:
            out_f.append(previous)
            out_w.append(0.0)
        out_f.append(f)
        out_w.append(w)
    return out_f, out_w


def normalised_weights(windows: Sequence[Window], num_frames: int, device=None) -> list[torch.Tensor]:
    """Each window's row weights divided by the total weight of its frame over all windows (so they sum to 1)."""
    total = torch.zeros(num_frames, dtype=torch.float64)
    for w in windows:
        total.index_add_(0, torch.tensor(w.frames), torch.tensor(w.weights, dtype=torch.float64))
    out = []
    for w in windows:
        t = torch.tensor(w.weights, dtype=torch.float64) / total[list(w.frames)].clamp_min(1e-300)
        out.append(t.to(device=device, dtype=torch.float32))
    return out


def fuse(fn: Callable[[torch.Tensor, Window, torch.Tensor], torch.Tensor], x: torch.Tensor,
         windows: Sequence[Window]) -> torch.Tensor:
    """Run ``fn(x_window, window, weights)`` on each window of x [B, F, ...] (frames on dim 1) and blend the outputs
    [B, len(window), ...] per frame. One window that is the whole clip is ``fn(x, ...)`` itself, bit for bit."""
    f = x.shape[1]
    if is_whole_clip(windows, f):
        return fn(x, windows[0], torch.ones(f, device=x.device))
    out = None
    for w, wn in zip(windows, normalised_weights(windows, f, device=x.device)):
        idx = w.index(x.device)
        y = fn(x.index_select(1, idx), w, wn)
        if out is None:
            out = torch.zeros((y.shape[0], f, *y.shape[2:]), device=y.device, dtype=y.dtype)
        out.index_add_(1, idx, y * wn.to(y.dtype).view(1, -1, *[1] * (y.dim() - 2)))
    return out
