"""Edit-quality figures measured against the rendered truth (frames [F,H,W,3] in 0..1, masks [F,H,W] bool).

Because the world is rendered, every figure has an exact reference: the edit's ground-truth clip, the
object's masks in source and truth, the backgrounds without the object, and the known motion and light
between frames (``Clip.flow`` / ``Clip.warp``), so that temporal figures count only what the truth does not do:
``warp_error`` / ``normalised_warp_error`` (every pixel against the previous frame moved by the known motion)
and ``flicker`` (the object's colour and the background's mean, with the known light undone).
"""
from __future__ import annotations

import colorsys
import math
from collections import deque
from typing import Optional

import numpy as np
import torch

from .render import BACKGROUNDS, COLOURS, SHAPES, Clip, render_background, shape_coverage

MAX_PSNR = 100.0
OBJECT_DISTANCE = 0.25  # RGB distance from the background above which a pixel is the object
MIN_OBJECT_PIXELS = 12  # fewer: no object found


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else float("nan")


def _t(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def psnr(a, b, mask=None) -> float:
    """PSNR in dB (peak 1) over all pixels or over ``mask``; identical inputs give MAX_PSNR."""
    a, b = _t(a).float(), _t(b).float()
    err = (a - b).pow(2)
    if mask is not None:
        m = _t(mask).bool()
        if not m.any():
            return float("nan")
        err = err[m]
    mse = float(err.mean())
    return MAX_PSNR if mse <= 10 ** (-MAX_PSNR / 10) else 10 * math.log10(1.0 / mse)


def object_region(*clips: Clip) -> torch.Tensor:
    """[F,H,W] bool: every pixel an object of these clips touches (any visible coverage). Outside it the edit's
    truth equals the source exactly; the masks (coverage > 0.5) leave out the anti-aliased rim, whose colour a
    recolour changes too, so measured outside the masks the rendered truth itself scored 30-39 dB."""
    region = clips[0].coverage > 0
    for c in clips[1:]:
        region = region | (c.coverage > 0)
    return region


def background_psnr(edited, source, object_masks) -> float:
    """PSNR outside the object against the source clip: give ``object_region(source_clip, truth)`` (the older
    definition: the union of the source's and the truth's masks)."""
    return psnr(edited, source, ~_t(object_masks).bool())


def mask_iou(a, b) -> float:
    a, b = _t(a).bool(), _t(b).bool()
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


def segment_object(frames, truth: Clip) -> torch.Tensor:
    """Object pixels of edited frames: far in colour from the truth's frames without the object (its background
    under the camera and light, and the occluder)."""
    if truth.scene.still:
        bg = torch.from_numpy(np.asarray(render_background(truth.scene), dtype=np.float32))
    else:
        bg = truth.plates
    return (_t(frames).float() - bg).norm(dim=-1) > OBJECT_DISTANCE


def nearest_colour(rgb) -> str:
    """The world colour whose hue is closest (circular), for a mean object colour."""
    h, s, v = colorsys.rgb_to_hsv(*[float(c) for c in rgb])
    if s < 0.25 or v < 0.2:
        return "none"
    best, dist = "none", 1e9
    for name, ref in COLOURS.items():
        rh = colorsys.rgb_to_hsv(*ref)[0]
        d = min(abs(h - rh), 1 - abs(h - rh))
        if d < dist:
            best, dist = name, d
    return best


def object_colours(frames, masks) -> list[str]:
    frames, masks = _t(frames).float(), _t(masks).bool()
    out = []
    for f, m in zip(frames, masks):
        out.append(nearest_colour(f[m].mean(0)) if m.any() else "none")
    return out


def object_hue_accuracy(frames, masks, colour: str) -> float:
    """Share of frames whose object (inside ``masks``) has ``colour``'s hue. Read over the truth's mask, so where the
    background has the target's hue (green grass, blue water, sand's yellow) a frame whose object vanished counts
    too: an upper bound there. No test of the object's presence separates the two in this world: the VAE's round
    trip of the bare background differs from it as much as a dark green ball on grass does (BENCHMARKS.md)."""
    names = object_colours(frames, masks)
    return sum(n == colour for n in names) / len(names)


def shape_accuracy(edited, truth: Clip, source: Clip) -> float:
    """Share of frames whose segmented object matches the truth's shape better than the source's."""
    seg = segment_object(edited, truth)
    hits = 0
    for s, t, o in zip(seg, truth.masks, source.masks):
        it, io = mask_iou(s, t), mask_iou(s, o)
        hits += int(it > io and it > 0.5)
    return hits / seg.shape[0]


# ----------------------------------------------------------------------------------------------
# shapes read off a mask without its truth (also vp2p_world.evaluate's classifier)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected region of a boolean [H,W] mask (BFS; images are tiny)."""
    h, w = mask.shape
    label = np.zeros((h, w), dtype=np.int32)
    best, best_size, cur = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if label[y0, x0]:
            continue
        cur += 1
        label[y0, x0] = cur
        q, size = deque([(y0, x0)]), 0
        while q:
            y, x = q.popleft()
            size += 1
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not label[ny, nx]:
                    label[ny, nx] = cur
                    q.append((ny, nx))
        if size > best_size:
            best, best_size = cur, size
    return label == best if best else np.zeros_like(mask)


_SHAPE_AREA: dict[str, float] = {}


def _shape_area(shape: str) -> float:
    """Area of a shape at half-extent 1 (measured by the renderer, so always consistent with it)."""
    if shape not in _SHAPE_AREA:
        _SHAPE_AREA[shape] = float((shape_coverage(shape, 32.0, 32.0, 20.0, 64) > 0.5).sum()) / 400.0
    return _SHAPE_AREA[shape]


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """Best-fitting world shape of a mask: each shape is scaled to the mask's area and its centroid
    moved onto the mask's; returns (shape, IoU)."""
    mask = np.asarray(mask, dtype=bool)
    area = float(mask.sum())
    if area < MIN_OBJECT_PIXELS:
        return "none", 0.0
    res = mask.shape[0]
    ys, xs = np.nonzero(mask)
    my, mx = ys.mean() + 0.5, xs.mean() + 0.5
    best, best_iou = "none", -1.0
    for shape in SHAPES:
        half0 = np.sqrt(area / _shape_area(shape))
        for half in (0.9 * half0, half0, 1.1 * half0):
            t = shape_coverage(shape, mx, my, half, res) > 0.5
            if not t.any():
                continue
            ty, tx = np.nonzero(t)
            t = shape_coverage(shape, mx + (mx - tx.mean() - 0.5), my + (my - ty.mean() - 0.5), half, res) > 0.5
            iou = float((t & mask).sum() / max((t | mask).sum(), 1))
            if iou > best_iou:
                best, best_iou = shape, iou
    return best, best_iou


def shape_any_size_accuracy(edited, truth: Clip, shape: str) -> float:
    """Share of frames whose segmented object (its largest region) is ``shape`` at whatever size it was drawn
    (``classify_shape``). ``shape_accuracy`` also asks for the truth's size: a star in place of a ball at the
    ball's area instead of its half-extent fails there and counts here. Judged on the frames where the truth's own
    object reads as ``shape`` (an occluder crossing it cuts it into parts); nan where there is none."""
    def shapes(frames) -> list[str]:
        return [classify_shape(largest_component(s.numpy()))[0] for s in segment_object(frames, truth)]

    judged = [i for i, s in enumerate(shapes(truth.frames)) if s == shape]
    if not judged:
        return float("nan")
    drawn = shapes(edited)
    return sum(drawn[i] == shape for i in judged) / len(judged)


def background_accuracy(edited, object_masks, target: str) -> float:
    """Share of frames whose background (outside the object) is, of the world's backgrounds, nearest the target's
    colour (nearer the target than the source alone passed a flat gray frame for grass -> sand)."""
    edited, m = _t(edited).float(), _t(object_masks).bool()
    names = list(BACKGROUNDS)
    refs = torch.tensor([BACKGROUNDS[n][0] for n in names])
    hits = 0
    for f, mm in zip(edited, m):
        mean = f[~mm].mean(0)
        hits += int(names[int((refs - mean).norm(dim=1).argmin())] == target)
    return hits / edited.shape[0]


def temporal_consistency(frames, masks) -> dict:
    """Mean frame-to-frame change of the object's mean colour and of the background pixels (RGB L2)."""
    frames, masks = _t(frames).float(), _t(masks).bool()
    obj, bg = [], []
    for i in range(1, frames.shape[0]):
        a, b = masks[i - 1], masks[i]
        if a.any() and b.any():
            obj.append(float((frames[i][b].mean(0) - frames[i - 1][a].mean(0)).norm()))
        out = ~(a | b)
        if out.any():
            bg.append(float((frames[i][out] - frames[i - 1][out]).norm(dim=-1).mean()))
    return {"object": _mean(obj), "background": _mean(bg)}


def _warp_terms(frames, clip: Clip, region: str) -> tuple[float, float]:
    """Over ``clip.valid(region=region)`` of every pair: the mean squared residual of ``clip.warp(frames)`` against
    ``frames[1:]``, and the warp's mean noise gain (how much independent per-frame noise of unit variance adds to
    that mean: 1 + r^2 * sum of the squared bilinear weights, r the change of light). nan where nothing is valid."""
    frames = _t(frames).float()
    valid = clip.valid(region=region)
    if not valid.any():
        return float("nan"), float("nan")
    residual = (clip.warp(frames) - frames[1:])[valid]
    grid = clip.flow()
    frac = grid - grid.floor()
    w2 = ((1 - frac) ** 2 + frac ** 2).prod(-1)  # sum of the squared weights of a bilinear sample
    ratio = clip.gains[1:] / clip.gains[:-1]
    gain = 1 + ratio[:, None, None, :] ** 2 * w2[..., None]
    return float(residual.pow(2).mean()), float(gain[valid].mean())


def warp_error(frames, truth: Clip, region: str = "frame", relative: bool = True) -> float:
    """Temporal error under the known motion: the RMS difference (0..1 units) between each frame t+1 of ``frames``
    and its frame t moved onto it by ``truth``'s motion and light (``Clip.warp``), over the pixels where that move is
    exact (``Clip.valid``; ``region`` "frame", "background" or "object"), all pairs pooled. ``truth`` is the
    edit's rendered truth, which moves as the source does.

    ``relative`` (default): only what exceeds the truth's own error on the same pixels (the warp's interpolation
    of a textured background), sqrt(max(0, e(frames)^2 - e(truth)^2)): 0 for the truth however its camera and
    light move; independent per-frame noise of sigma s gives about s * sqrt(2) (exactly that where the motion is
    whole pixels and the light steady; ``normalised_warp_error`` gives s). nan with one frame or no valid pixel."""
    mse, _ = _warp_terms(frames, truth, region)
    if relative and not math.isnan(mse):
        mse = max(0.0, mse - _warp_terms(truth.frames, truth, region)[0])
    return math.sqrt(mse)


def normalised_warp_error(frames, truth: Clip, region: str = "frame") -> float:
    """``warp_error`` (relative) as the sigma of independent per-frame noise that would cause it: the excess mean
    squared error divided by the warp's noise gain (1 + r^2 * sum of squared bilinear weights, 1.25 to 2), so
    per-frame noise of sigma s gives s under any camera motion and light. 0 for the truth."""
    mse, gain = _warp_terms(frames, truth, region)
    if math.isnan(mse):
        return mse
    return math.sqrt(max(0.0, mse - _warp_terms(truth.frames, truth, region)[0]) / gain)


def flicker(frames, truth: Clip) -> dict:
    """Frame-to-frame flicker beyond the truth's own change, with the known motion and light compensated (RGB L2,
    mean over pairs; 0 for the truth, and for any clip that changes as the truth does).

    - ``object``: the change of the object's unlit mean colour (``frames / truth.gains`` over the pixels that are
      wholly the object in the truth, coverage 1) minus the truth's change of the same.
    - ``background``: the mean over the background pixels that the known motion maps exactly
      (``truth.valid(t, "background")``) of ``warp(frames)[t] - frames[t+1]``, unlit (over frame t+1's gains),
      minus the truth's same mean: a flash or a colour shift of the whole background, not per-pixel noise
      (which ``warp_error`` counts).
    """
    frames, ref = _t(frames).float(), truth.frames
    gains = truth.gains
    region = truth.coverage == 1
    colours = [(frames[i][m].mean(0) - ref[i][m].mean(0)) / gains[i] if m.any() else None
               for i, m in enumerate(region)]
    obj = [float((b - a).norm()) for a, b in zip(colours, colours[1:]) if a is not None and b is not None]
    bg = []
    if frames.shape[0] > 1:
        valid = truth.valid(region="background")
        residual = (truth.warp(frames) - frames[1:]) - (truth.warp(ref) - ref[1:])
        for i, m in enumerate(valid):
            if m.any():
                bg.append(float((residual[i][m].mean(0) / gains[i + 1]).norm()))
    return {"object": _mean(obj), "background": _mean(bg)}


def boundary_pairs(windows, num_frames: int) -> list[bool]:
    """For each pair of neighbouring frames (t, t+1): True where the windows that predict them differ (a context
    window starts or ends between them), from windows with ``frames`` and ``weights`` (vp2p_core.context)."""
    cover = [set() for _ in range(num_frames)]
    for k, w in enumerate(windows):
        for f, wt in zip(w.frames, w.weights):
            if wt > 0:
                cover[f].add(k)
    return [cover[t] != cover[t + 1] for t in range(num_frames - 1)]


def pair_changes(frames, truth: Optional[Clip] = None) -> torch.Tensor:
    """The mean absolute change from each frame to the next [F-1]; with ``truth``, of frame t moved onto frame t+1
    by the known motion and light (``Clip.warp``) over the pixels where that move is exact, so a moving camera
    does not count."""
    x = _t(frames).float()
    if truth is None:
        return (x[1:] - x[:-1]).abs().flatten(1).mean(1)
    residual = (truth.warp(x) - x[1:]).abs()
    valid = truth.valid(region="frame")
    return torch.stack([r[m].mean() if m.any() else r.mean() for r, m in zip(residual, valid)])


def seam_ratio(frames, windows, truth: Optional[Clip] = None) -> float:
    """Mean frame-to-frame change (``pair_changes``) across context-window boundaries over the mean change between
    frames inside windows: about 1 for a clip without seams; frames [F, ...]."""
    change = pair_changes(frames, truth)
    at = torch.tensor(boundary_pairs(windows, change.shape[0] + 1))
    if not at.any() or at.all():
        raise ValueError("seam_ratio: needs frame pairs both at window boundaries and inside windows")
    return float(change[at].mean() / change[~at].mean().clamp_min(1e-12))
