"""Edit-quality figures measured against the rendered truth (frames [F,H,W,3] in 0..1, masks [F,H,W] bool).

Because the world is rendered, every figure has an exact reference: the edit's ground-truth clip, the
object's masks in source and truth, the backgrounds without the object.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
import torch

from .render import BACKGROUNDS, COLOURS, Clip, render_background

MAX_PSNR = 100.0
OBJECT_DISTANCE = 0.25  # RGB distance from the background above which a pixel is the object


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


def background_psnr(edited, source, object_masks) -> float:
    """PSNR outside the object (give the union of source and edit masks) against the source clip."""
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
    """Share of frames whose object (inside ``masks``) has ``colour``'s hue."""
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


def background_accuracy(edited, object_masks, target: str, source: str) -> float:
    """Share of frames whose background (outside the object) is nearer the target background's colour."""
    edited, m = _t(edited).float(), _t(object_masks).bool()
    tgt = torch.tensor(BACKGROUNDS[target][0])
    src = torch.tensor(BACKGROUNDS[source][0])
    hits = 0
    for f, mm in zip(edited, m):
        mean = f[~mm].mean(0)
        hits += int((mean - tgt).norm() < (mean - src).norm())
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
    mean = lambda v: sum(v) / len(v) if v else float("nan")
    return {"object": mean(obj), "background": mean(bg)}
