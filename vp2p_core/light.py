"""Light normalisation: the clip is edited as if lit throughout by its brightest frame's light, and its own light
is put back on the decoded edit.

One-shot tuning fits the model to the clip. Where the clip's exposure or white balance drifts or flickers, the
tuned model's inverted noise turns back into the clip under the source prompt but into a garbled object under the
target prompt (BENCHMARKS.md, the fourteenth moving-world run: a green -> red triangle under drifting light was
edited on 1 frame of 8, on all 8 with the light taken out first). A change of light over the whole frame is, to a
good approximation, a per-frame RGB gain. ``estimate_light`` measures it pixel by pixel between frames (the
median ratio of frames 1, 2, 4, ... apart, compared along the camera's pan where there is one, fitted by weighted
least squares); the frames are divided by it before they are
encoded (``remove_light``) and the decoded frames multiplied by it again (``restore_light``). A composite then
pastes that over the source frames as they were lit.

Why the brightest frame (of each channel, so the reference may be a white balance no single frame had): the darker
frames are brought up to it, and putting the light back only darkens (gains <= 1), so that step never clips. Where
bringing a frame up to it would push more than 1% of its pixels past 1 (the brightest frame a flash or a fade to
white, a sky blown out on every frame: taking the light out would clamp them, and putting it back would dim them),
the reference is the brightest light no frame objects to, and the brighter frames get gains above 1. Normalised to
the clip's mean light instead, or to its first frame, the clip stays darker than at its best, and small-world edits
failed that had not (a flickering star, fast inversion: 0.94 of frames recoloured without normalisation, 0.25 at
the mean light, 0.44 at the first frame's, 1.00 at the brightest frame's; BENCHMARKS.md). This was measured in the
small world only; on real footage a cut reads as light, and so, in part, does a zoom across a scene that grows
brighter or darker (undone again after decoding, but the model edits the flattened clip).

Light that differs across the frame (a passing shadow, a spotlight) is not a gain and stays in the clip. On the
small world's clips with a still camera the gains are exactly 1 where the light does not change, whatever moves,
and exactly the true light where it drifts or flickers (up to one factor per channel for the whole clip); under a
pan or zoom they are flat within 1% of their mean, and follow the light within 1.7% on the clip where everything
moves at once. A 64-frame pan across a scene whose brightness doubles from one side to the other gets gains within
0.7% of the true light (compared pixel for pixel without following the pan: 15-29% off; tests/test_core_light.py).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .errors import VP2PInputError
from .host import Host

# The smallest gain: a frame darker than this share of the reference light (a fade to black, a frame mostly black)
# is brightened at most 1 / MIN_GAIN times, rather than have its noise blown up to white.
MIN_GAIN = 0.25
# The share of a frame's pixels that taking the light out may push past 1 (and so clamp) before the reference light
# is lowered (see estimate_light's end).
_CLIPPED_SHARE = 0.01
# Pixels that say nothing about the light: too dark to measure a ratio on (noise, quantisation), or clipped.
_DARK = 2.0 / 255.0
_SATURATED = 254.0 / 255.0
# The light is read on at most this many pixels of each frame (every n-th row and column): it is one gain per
# channel, and a 512 x 512 clip of 128 frames is measured in about 3.5 s on one CPU thread.
_PIXELS = 16384
# A pair of frames whose log ratios spread about their median by less than this (2%: noise, 8-bit quantisation, a
# sub-pixel pan over a smooth scene) is as good as exact; one that spreads more (frames showing different parts of
# a scene) weighs 1 / spread^2 in the fit (a spread of 0.2, a textured scene compared across a pan, about 1%).
_SPREAD_FLOOR = 0.02


def check_frames(frames: torch.Tensor, what: str) -> None:
    """``frames`` (the input named ``what``) are RGB frames [F, H, W, 3], F >= 1."""
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] != 3 or \
            0 in frames.shape[:3] or not frames.is_floating_point():
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        kind = "" if not isinstance(frames, torch.Tensor) or frames.is_floating_point() else f" of {frames.dtype}"
        raise VP2PInputError(f"{what}: expected RGB frames [frames, height, width, 3] of floats in 0..1, got "
                             f"{shape}{kind}")


def estimate_light(frames: torch.Tensor, what: str = "frames", host: Host = Host()) -> torch.Tensor:
    """The light's RGB gain per frame [F, 3] (float32, at least MIN_GAIN), relative to each channel's brightest
    frame (at most 1), or to a darker reference where the brightest would clip frames (see the module's docstring).
    ``frames`` [F, H, W, 3] in 0..1.

    Measured between frames, pixel by pixel: the change of light from frame s to frame t is the median over
    pixels of log(x_t / x_s), per channel, over the pixels lit in both (above ``_DARK``, below ``_SATURATED``);
    the pairs are the frames 1, 2, 4, 8, ... apart, and the light per frame is the weighted least-squares fit to
    all of their changes. Why pixel by pixel: where the camera holds still, the background's pixels give the
    change exactly, whatever moves across it (they are most of the frame), so an evenly lit clip gets gains of
    exactly 1; the first version of this, each frame's median over the brightest's, read what moved as light (up
    to 5% on the small world's evenly lit clips). Why pairs far apart as well as neighbours: a slow drift of 8-bit
    footage changes most pixels by less than one step from one frame to the next (their ratio is exactly 1), and
    errors of neighbouring pairs alone add up over a long clip; the far pairs see the whole change.

    Under a pan the same pixel of two frames shows different parts of the scene, and a scene that grows brighter
    as the camera pans across it read as light (15-29% off on a 64-frame pan across a scene whose brightness doubles
    from one side to the other). So each pair is also compared shifted by the camera's translation between its
    frames, found by phase correlation (``_shift_between``), and keeps, channel by channel, whichever of the two
    comparisons, still or shifted, leaves the smaller spread of log ratios about their median (``_compare``): the
    still one wherever it matches the frames as well, so a still camera gives exactly the same changes as without
    the shift, and a channel only one of them measured takes that one's reading (a patch that moves with the camera
    may be all of a channel there is). A pair neither comparison explains (a zoom, frames too far apart along a
    pan, a cut) has a wide spread and counts little in the fit: each pair's weight is 1 / (spread^2 +
    ``_SPREAD_FLOOR``^2), the spread taken over the channels it measured. A channel with under 1% of a pair's
    pixels lit in both frames (a frame fading to black, a colour with no blue in it) counts the ratio of the two
    frames' medians instead; a pair with no channel measured weighs as if exact. At most ``_PIXELS`` pixels per
    frame are read (a regular grid). ``host``: progress and the stop button, every few frames and pairs (128 frames
    at 512 px take a few seconds on one CPU thread; a clip of hundreds, tens)."""
    check_frames(frames, what)
    if frames.device.type == "mps":  # its spectra and fit are float64, which Apple's GPUs do not have
        frames = frames.cpu()
    count, height, width = frames.shape[:3]
    stride = max(1, math.ceil(math.sqrt(height * width / _PIXELS)))
    grid_height, grid_width = -(-height // stride), -(-width // stride)  # the grid frame[::stride, ::stride]
    window = torch.outer(torch.hann_window(grid_height, periodic=False, dtype=torch.float64),
                         torch.hann_window(grid_width, periodic=False, dtype=torch.float64)).to(frames.device)
    pairs = [(t - k, t) for k in _powers_of_two_below(count) for t in range(k, count)]
    loop = host.loop(-(-count // _FRAMES_PER_TICK) + -(-len(pairs) // _PAIRS_PER_TICK), "Normalise Light")
    ticks = 0
    logs, lit, medians, spectra, highs = [], [], [], [], []
    for i, frame in enumerate(frames.detach()):  # one frame at a time: no full-size float copy of a long clip
        if i % _FRAMES_PER_TICK == 0 and i:
            ticks += 1
            loop.step(ticks)
        if not bool(torch.isfinite(frame).all()):
            raise VP2PInputError(f"{what}: expected finite values in 0..1, got NaN or infinity")
        x = frame[::stride, ::stride].float().permute(2, 0, 1).contiguous()  # [3, h, w]
        logs.append(x.clamp_min(_DARK).log())
        lit.append((x > _DARK) & (x < _SATURATED))
        medians.append(x.flatten(1).median(dim=1).values.clamp_min(_DARK).log())
        highs.append(torch.quantile(x.flatten(1), 1.0 - _CLIPPED_SHARE, dim=1).clamp_min(_DARK).log())
        spectra.append(_spectrum(logs[-1].mean(dim=0), window))
    ticks += 1
    loop.step(ticks)
    least = max(1, logs[0][0].numel() // 100)
    changes, weights = [], []
    for j, (s, t) in enumerate(pairs):
        if j % _PAIRS_PER_TICK == 0 and j:
            ticks += 1
            loop.step(ticks)
        change, deviation, enough = _compare(logs[s], lit[s], logs[t], lit[t], (0, 0), least)
        shift = _shift_between(spectra[s], spectra[t], grid_width)
        if shift != (0, 0):
            moved = _compare(logs[s], lit[s], logs[t], lit[t], shift, least)
            better = moved[2] & (~enough | (moved[1] < deviation))  # per channel: what it measured more closely
            change, deviation = torch.where(better, moved[0], change), torch.where(better, moved[1], deviation)
            enough = enough | moved[2]
        if bool(enough.any()):  # the pair weighs by its spread over the channels it measured
            spread = float(deviation[enough].sum() / enough.sum())
            weights.append(1.0 / (spread ** 2 + _SPREAD_FLOOR ** 2))
        else:  # too few lit pixels in every channel: the frames' medians, as if exact
            weights.append(1.0 / _SPREAD_FLOOR ** 2)
        changes.append(torch.where(enough, change, medians[t] - medians[s]))
    if pairs:
        loop.step(ticks + 1)
    light = _fit_light(pairs, torch.stack(changes).double().cpu() if pairs else None, count,
                       weights=torch.tensor(weights, dtype=torch.float64))  # [F, 3], in logs
    # the reference: each channel's brightest light, or a darker one where taking the brightest out of some frame
    # would push more than _CLIPPED_SHARE of its pixels past 1 (a flash or a fade to white measured brighter than
    # the rest, a sky blown out on every frame): those frames get gains above 1, darkened to the reference and
    # brightened back. Where no frame clips, exactly the brightest light, as before.
    allowed = light - torch.stack(highs).to(light)  # per frame: the brightest reference that keeps its highs <= 1
    reference = torch.minimum(light.max(dim=0, keepdim=True).values, allowed.min(dim=0, keepdim=True).values)
    return (light - reference).exp().clamp_min(MIN_GAIN).float()


_FRAMES_PER_TICK, _PAIRS_PER_TICK = 8, 64  # estimate_light's progress (each tick: one host update, one stop check)


def _spectrum(luminance: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """The Fourier transform of a frame's log luminance [h, w], its mean taken out (so a gain, which adds a constant
    to the logs, drops out) and tapered to 0 at the frame's edges by ``window`` (a 2-D Hann window [h, w], float64,
    built once per clip), for ``_shift_between``."""
    x = luminance.double()
    return torch.fft.rfft2((x - x.mean()) * window)


def _shift_between(source: torch.Tensor, target: torch.Tensor, width: int) -> tuple[int, int]:
    """The translation (dy, dx), in grid pixels, that best maps the frame of spectrum ``source`` onto that of
    ``target`` (target[y, x] ~ source[y - dy, x - dx]; frames ``width`` grid pixels wide): the peak of their phase
    correlation; (0, 0) on a grid under 4 pixels a side, too small to tell. Written here rather than taken from a
    library: kornia has no phase correlation, and scikit-image's is not a dependency."""
    h = source.shape[0]
    if min(h, width) < 4:
        return 0, 0
    cross = target * source.conj()
    surface = torch.fft.irfft2(cross / cross.abs().clamp_min(1e-12), s=(h, width))
    dy, dx = divmod(int(surface.argmax()), width)
    return (dy - h if dy > h // 2 else dy), (dx - width if dx > width // 2 else dx)


def _compare(source_logs: torch.Tensor, source_lit: torch.Tensor, target_logs: torch.Tensor,
             target_lit: torch.Tensor, shift: tuple[int, int], least: int):
    """The change of light from one frame to another (per channel, the median of log(x_t / x_s) over the pixels lit
    in both where the two overlap, the target's pixel (y, x) against the source's (y - dy, x - dx)), the spread of
    those log ratios about it (per channel, their median absolute deviation: near 0 where the two frames show the
    same scene, up to noise and quantisation), and per channel whether at least ``least`` pixels counted (the other
    two are NaN where no pixel counted, and not to be used where fewer than ``least`` did). Frames are [3, h, w]."""
    dy, dx = shift
    h, w = source_logs.shape[-2:]
    rows_t, rows_s = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    cols_t, cols_s = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    ratio = (target_logs[:, rows_t, cols_t] - source_logs[:, rows_s, cols_s]).flatten(1)
    both = (target_lit[:, rows_t, cols_t] & source_lit[:, rows_s, cols_s]).flatten(1)
    change = torch.where(both, ratio, math.nan).nanmedian(dim=1).values
    deviation = torch.where(both, (ratio - change[:, None]).abs(), math.nan).nanmedian(dim=1).values
    enough = both.sum(dim=1) >= least
    return change, deviation, enough


def _fit_light(pairs: list[tuple[int, int]], changes: Optional[torch.Tensor], count: int,
               weights: torch.Tensor) -> torch.Tensor:
    """The light per frame [F, 3] (logs, float64) whose differences fit ``changes`` [pairs, 3] (frame t's light
    minus frame s's, per pair (s, t)) in least squares, each pair weighted by ``weights`` [pairs].
    Solved by the normal equations, F x F however many pairs: the pairs' weighted graph Laplacian, plus one on
    frame 0's diagonal, which pins its light to 0 (only the light relative to the brightest frame matters)."""
    normal = torch.zeros(count, count, dtype=torch.float64)
    normal[0, 0] = 1.0
    rhs = torch.zeros(count, 3, dtype=torch.float64)
    if pairs:
        s, t = (torch.tensor(index, dtype=torch.long) for index in zip(*pairs))
        w = weights.double() / weights.max()  # frame 0's pin weighs as much as the best pair
        for row, col, sign in ((t, t, 1.0), (s, s, 1.0), (t, s, -1.0), (s, t, -1.0)):
            normal.index_put_((row, col), sign * w, accumulate=True)
        rhs.index_add_(0, t, w[:, None] * changes)
        rhs.index_add_(0, s, -w[:, None] * changes)
    return torch.linalg.solve(normal, rhs)


def _powers_of_two_below(count: int) -> list[int]:
    out, k = [], 1
    while k < count:
        out.append(k)
        k *= 2
    return out


def check_light_count(count: int, gains: torch.Tensor, what: str) -> None:
    """``count`` frames (of the input named ``what``) are the light's F frames or a whole multiple of them: one
    clip per target prompt."""
    f = gains.shape[0]
    if count % f:
        raise VP2PInputError(f"{what}: expected the light's {f} frames or a whole multiple of them (one clip per "
                             f"target prompt), got {count} frames")


def _gains_for(frames: torch.Tensor, gains: torch.Tensor, what: str) -> torch.Tensor:
    """``gains`` [F, 3] as a [N, 1, 1, 3] factor for ``frames`` [N, H, W, 3], N a whole multiple of F (the frames
    of several target prompts, one clip after another)."""
    check_frames(frames, what)
    if not isinstance(gains, torch.Tensor) or gains.dim() != 2 or gains.shape[1] != 3 or gains.shape[0] == 0:
        shape = tuple(gains.shape) if isinstance(gains, torch.Tensor) else type(gains).__name__
        raise VP2PInputError(f"light: expected an RGB gain per frame [frames, 3], got {shape}")
    if not bool(torch.isfinite(gains).all()) or not bool((gains > 0).all()):
        raise VP2PInputError("light: expected finite gains above 0")
    check_light_count(frames.shape[0], gains, what)
    n, f = frames.shape[0], gains.shape[0]
    return gains.to(device=frames.device, dtype=frames.dtype).repeat(n // f, 1)[:, None, None, :]


def remove_light(frames: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """``frames`` [F, H, W, 3] divided by the light's gain per frame, clamped to 0..1: the clip as if lit by the
    reference light throughout (its brightest frame's, where that clips no frame; ``estimate_light``)."""
    return (frames / _gains_for(frames, gains, "frames")).clamp_(0.0, 1.0)  # in place: one full-size copy, not two


def restore_light(frames: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """``frames`` [N, H, W, 3] (decoded from an evenly lit clip) times the light's gain per frame, clamped to 0..1.
    N may be several clips of the light's frames, one per target prompt."""
    return (frames * _gains_for(frames, gains, "images")).clamp_(0.0, 1.0)


def take_light_out(frames: torch.Tensor, normalise_light: bool,
                   host: Host = Host()) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """What to encode, and the gains to put back: with ``normalise_light`` (``LightOptions``) the frames with their
    light taken out and ``estimate_light``'s gains (``host``: its progress and stop button); without, the frames as
    they are and None."""
    if not normalise_light:
        return frames, None
    gains = estimate_light(frames, host=host)
    return remove_light(frames, gains), gains


def with_light(frames: torch.Tensor, gains: Optional[torch.Tensor]) -> torch.Tensor:
    """Decoded ``frames`` with the clip's light put back (``gains`` from ``take_light_out``; None: as they are)."""
    return frames if gains is None else restore_light(frames, gains)
