"""The local-blend mask as a region of the image, and the decoded edit pasted over the source frames through it.

LocalBlend keeps the source's *latents* outside the mask, but the VAE's round trip still changes those pixels
(for SD, by about as much as a 30 dB PSNR); compositing the decoded edit over the source frames makes every
pixel outside the (dilated) mask the source's own. Masks here are binary float tensors (0 or 1) whose last
two dimensions are height and width; dilation is by a square, so a square grows by exactly ``pixels`` on each
side, and the feather is a linear ramp laid inside the dilated region's border, so it never reaches past it.
Before that, ``refine_mask`` can move the mask's blocky edge (one block per latent pixel of the attention grid) onto
the edges of the frames; inside the mask, ``change_weight`` can hand back to the source the pixels the edit hardly
changed (the VAE's halo and lost texture around an edited object, but not what the edit took away), and
``occluder_mask`` the pixels of something in front of the object, which the coarse mask takes in. ``composite_alpha``
is the whole weight of the edit, for ``composite_frames`` and ComfyUI's Blend Mask node alike.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .errors import VP2PInputError
from .options import CompositeOptions


def _planes(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    """[..., h, w] -> [N, 1, h, w] float, and the leading shape to restore."""
    return mask.float().reshape(-1, 1, *mask.shape[-2:]), mask.shape[:-2]


def dilate_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow a binary mask [..., h, w] by ``pixels`` on every side (a (2p+1)-square; separable, so cheap for large
    p). Pixels beyond the frame do not count. 0 returns the mask as float, unchanged."""
    x, lead = _planes(mask)
    p = int(pixels)
    if p > 0:
        k = 2 * p + 1
        x = F.max_pool2d(F.max_pool2d(x, (1, k), stride=1, padding=(0, p)), (k, 1), stride=1, padding=(p, 0))
    return x.reshape(*lead, *x.shape[-2:])


def erode_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Shrink a binary mask [..., h, w] by ``pixels`` on every side; the frame's edge does not erode it."""
    return 1.0 - dilate_mask(1.0 - mask.float(), pixels)


def feather_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    """A binary mask [..., h, w] with a linear ramp over ``width`` pixels inside its border: a pixel j pixels
    deep (1 = on the border) weighs min(j, width + 1) / (width + 1). It is 0 exactly where the mask is 0 and 1
    exactly from width + 1 pixels deep on; 0 returns the mask unchanged."""
    m = mask.float()
    w = int(width)
    if w <= 0:
        return m
    total, layer = m.clone(), m
    for _ in range(w):
        layer = erode_mask(layer, 1)
        total = total + layer
    return total / (w + 1)


def smooth_mask_frames(mask: torch.Tensor, radius: int, frame_dim: int = 0) -> torch.Tensor:
    """Majority vote over time: a pixel of a binary mask is on where more than half of the frames within
    ``radius`` of its frame that are inside the clip have it on; a tie (only near the clip's ends, where the
    window is shorter) keeps the frame's own value. Fills a frame the mask missed and drops a one-frame speck,
    at the ends too once the radius leaves a majority there (radius 2 repairs the first frame from frames 1-2;
    padding by the end frame never would). 0 returns the mask as float, unchanged."""
    m = mask.float()
    r = int(radius)
    if r <= 0 or m.shape[frame_dim] == 1:
        return m
    x = m.movedim(frame_dim, -1)
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-1])
    on = flat.ge(0.5).float()
    # exact counts of the frames inside each window, and of those with the pixel on
    votes = F.pad(on, (r, r)).unfold(-1, 2 * r + 1, 1).sum(-1)
    inside = F.pad(torch.ones_like(on[:1]), (r, r)).unfold(-1, 2 * r + 1, 1).sum(-1)
    keep = (2 * votes > inside) | ((2 * votes == inside) & on.bool())
    return keep.float().reshape(shape).movedim(-1, frame_dim)


def upsample_mask(mask: torch.Tensor, size: Sequence[int], what: str = "mask") -> torch.Tensor:
    """A mask [..., h, w] at latent size -> [..., H, W]: each latent pixel becomes a whole block of pixels.
    The image size must be the same whole multiple of the latent size in both directions."""
    h, w = mask.shape[-2:]
    H, W = int(size[0]), int(size[1])
    if H % h or W % w or H // h != W // w:
        raise VP2PInputError(f"{what}: a {h}x{w} mask does not fit frames of {H}x{W}; expected frames a whole "
                             "multiple of the latent size (the VAE's downsampling, 8 in SD) in both directions")
    factor = H // h
    if factor == 1:
        return mask.float()
    x, lead = _planes(mask)
    x = x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    return x.reshape(*lead, H, W)


def _check_guides(guides: Sequence[torch.Tensor], mask: torch.Tensor) -> None:
    for x in guides:
        if tuple(x.shape[:-1]) != tuple(mask.shape):
            raise VP2PInputError(f"guides: frames {tuple(x.shape)} do not match the mask {tuple(mask.shape)}; expected "
                                 "the source frames and the edit at the mask's size, one per mask frame")


# the guided filter's regulariser, in squared colour units of frames in 0..1 (He et al.'s eps): edges weaker than
# about 0.1 in colour do not hold the mask. Chosen with refine_radius on the small world (BENCHMARKS.md); a constant
# rather than a setting because frames in 0..1 give it the same meaning for any model and size.
REFINE_EPS = 1e-2
# frames through the guided filter at once: its window sums hold 3 x (C+1)^2 channels per frame (36 for two RGB
# guides) and kornia's intermediates beside them, about 230 MB per 512-px frame in float32 (measured: 1.8 GB above
# the inputs for 8 frames at once); the frames are independent, so the chunk changes memory, not the result
REFINE_CHUNK = 2


def refine_mask(mask: torch.Tensor, guides: Sequence[torch.Tensor], radius: int,
                eps: float = REFINE_EPS) -> torch.Tensor:
    """A binary mask [..., H, W] snapped to the edges of ``guides`` (frames [..., H, W, C] in 0..1, the same
    leading shape): kornia's guided filter (He et al.) of the mask over (2r+1)-square windows, on where the result
    is above 1/2. Inside a window the filter is a linear function of the guide's colour fitted to the mask, so a
    block edge that cuts an object moves to the object's own edge. The guide is the frames' colours stacked; with
    several frames the mask is also snapped to the first one's (the source's) edges alone, and is on where either
    keeps it: with the stacked guide only, the old shape's corners that a shape swap's new shape leaves (source:
    object, edit: background) fell outside the mask and stayed in the composite. 0 returns the mask as float,
    unchanged."""
    from kornia.filters import guided_blur  # kornia's filter (multi-channel guide), not a copy of it

    r = int(radius)
    m, lead = _planes(mask)
    if r <= 0:
        return m.reshape(*lead, *m.shape[-2:])
    _check_guides(guides, mask)
    on = torch.zeros(m.shape, dtype=torch.bool, device=m.device)
    colours = [x[..., :3].reshape(-1, *x.shape[-3:-1], min(3, x.shape[-1])).to(m.device, torch.float32)
               for x in guides]
    for g in (torch.cat(colours, dim=-1), colours[0]) if len(colours) > 1 else colours:
        g = g.permute(0, 3, 1, 2)
        for i in range(0, m.shape[0], REFINE_CHUNK):
            q = guided_blur(g[i:i + REFINE_CHUNK], m[i:i + REFINE_CHUNK], 2 * r + 1, eps, border_type="replicate")
            on[i:i + REFINE_CHUNK] |= q.gt(0.5)
    return on.float().reshape(*lead, *m.shape[-2:])


# occluder_mask's ring of background around the mask: from this many pixels beyond the mask (the object's
# anti-aliased rim and the mask's own error may reach that far) to this many
OCCLUDER_RING = (2, 6)
# fewest pixels of ring, or of object, that make a frame's colour estimate; a frame with fewer is left alone
OCCLUDER_MIN_PIXELS = 8


def _segment_distance(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance of colours x [..., 3] to the segment from a to b [3] (every mix of the two)."""
    ab = b - a
    t = ((x - a) * ab).sum(-1, keepdim=True) / ab.pow(2).sum().clamp_min(1e-12)
    return (x - (a + t.clamp(0.0, 1.0) * ab)).norm(dim=-1)


def _ring_colours(colours: torch.Tensor, m: torch.Tensor) -> list[torch.Tensor]:
    """Per frame, the colour of the background around a binary mask: the median of the ring from ``OCCLUDER_RING``'s
    near to its far distance outside the mask (colours [N, H, W, C], m [N, 1, H, W]); NaNs where the ring has fewer
    than ``OCCLUDER_MIN_PIXELS`` pixels."""
    near, far = OCCLUDER_RING
    ring = (dilate_mask(m, far) - dilate_mask(m, near))[:, 0].gt(0.5)
    nan = torch.full((colours.shape[-1],), float("nan"), device=m.device)
    out = []
    for i in range(m.shape[0]):
        ring_colours = colours[i][ring[i]]
        out.append(ring_colours.median(dim=0).values if ring_colours.shape[0] >= OCCLUDER_MIN_PIXELS else nan)
    return out


def occluder_mask(source: torch.Tensor, mask: torch.Tensor, threshold: float, reach: int = 0) -> torch.Tensor:
    """The pixels of a binary mask [..., F, H, W] (frames on the last leading dimension), or of the mask grown by
    ``reach`` pixels, that belong neither to the masked object nor to the background around it, judged on the
    source frames [..., F, H, W, C] in 0..1: something in front of the object (a post it passes behind, a hand),
    which the attention grid's coarse mask takes in and the edit would paint over.

    Per frame, the background's colour is the median of a ring just outside the mask (``OCCLUDER_RING``), the
    object's the median of the masked pixels farther than ``threshold`` from it. The object fills most of its mask
    on most frames, so the median over the clip's frames of those medians is the object's colour; a frame whose
    own median is not within ``threshold`` of it (an occluder that hides most of the object there) takes the
    median of its masked pixels that are. A pixel is in front where its colour is farther than ``threshold`` (RGB
    distance; a grey distance for one-channel frames) from every mix of the object's colour and the background's,
    so the object's anti-aliased rim stays the object's. A frame with too few pixels of ring or of object
    (``OCCLUDER_MIN_PIXELS``) is left alone. A model of one colour per object: on an object of several colours the
    others count as in front too. Returns a binary float mask shaped as ``mask``; 0 where ``threshold`` is 0."""
    m, lead = _planes(mask)
    out = torch.zeros_like(m)
    if float(threshold) <= 0:
        return out.reshape(*lead, *m.shape[-2:])
    _check_guides((source,), mask)
    t = float(threshold)
    colours = source.reshape(-1, *source.shape[-3:]).to(m.device, torch.float32)[..., :3]
    inside = m[:, 0].gt(0.5)
    tested = dilate_mask(m, reach)[:, 0].gt(0.5)
    frames = lead[-1] if len(lead) else 1
    nan = torch.full((colours.shape[-1],), float("nan"), device=m.device)
    background, unlike, medians = _ring_colours(colours, m), [], []
    for i in range(m.shape[0]):
        bg = background[i]
        masked = colours[i][inside[i]]
        far_from_bg = masked[(masked - bg).norm(dim=-1) > t] if not bg.isnan().any() else masked[:0]
        unlike.append(far_from_bg)
        medians.append(far_from_bg.median(dim=0).values if far_from_bg.shape[0] >= OCCLUDER_MIN_PIXELS else nan)
    # the object's colour of each clip: the median of its frames' medians (frames on the last leading dimension)
    per_clip = torch.stack(medians).view(-1, frames, colours.shape[-1]).nanmedian(dim=1).values
    for i in range(m.shape[0]):
        reference = per_clip[i // frames]
        if background[i].isnan().any() or reference.isnan().any():
            continue
        obj = medians[i]
        if obj.isnan().any() or (obj - reference).norm() > t:
            own = unlike[i][(unlike[i] - reference).norm(dim=-1) <= t]
            if own.shape[0] < OCCLUDER_MIN_PIXELS:
                continue
            obj = own.median(dim=0).values
        out[i, 0] = (tested[i] & (_segment_distance(colours[i], obj, background[i]) > t)).float()
    return out.reshape(*lead, *m.shape[-2:])


def _image_masks(mask: torch.Tensor, size: Sequence[int], options: CompositeOptions,
                 guides: Optional[Sequence[torch.Tensor]], what: str, reach: int = 0,
                 outline: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """image_mask before its occluders are taken out, and the occluders within ``reach`` pixels of it (None with
    occluder_threshold 0)."""
    if mask.dim() < 3 or mask.shape[-3] != 1:
        raise VP2PInputError(f"{what}: expected a blend mask [..., 1, h, w], got {tuple(mask.shape)}")
    m = upsample_mask(mask[..., 0, :, :].gt(0.5), size, what)
    for name in ("refine_radius", "occluder_threshold"):
        if getattr(options, name) > 0 and not guides:
            raise VP2PInputError(f"{what}: {name} > 0 compares the mask with the frames, so it needs the source "
                                 f"frames and the decoded edit; give them or set {name} to 0")
    if options.refine_radius > 0:
        # a recolour keeps the object's outline: its mask snaps to the source's edges alone, so it cannot follow an
        # edit that drifts or sags past the object (a shape swap's needs the edit's edges too: its new outline)
        m = refine_mask(m, guides[:1] if outline else guides, radius=options.refine_radius)
    if options.occluder_threshold <= 0:
        return m, None
    return m, occluder_mask(guides[0], m, options.occluder_threshold, reach=reach)


def image_mask(mask: torch.Tensor, size: Sequence[int], options: CompositeOptions = CompositeOptions(),
               guides: Optional[Sequence[torch.Tensor]] = None, what: str = "mask",
               outline: bool = False) -> torch.Tensor:
    """The blend mask [..., 1, h, w] at latent size -> a binary mask [..., H, W] at image size: upsampled, then
    with ``options.refine_radius`` snapped to the edges of ``guides`` (the source frames and the decoded edit,
    [..., H, W, C] each; for an ``outline`` mask, ``EditResult.blend_outline``, a recolour's, the source frames'
    alone) by ``refine_mask``, and with ``options.occluder_threshold`` without what is in front of the object
    (``occluder_mask`` of the source frames)."""
    m, occluders = _image_masks(mask, size, options, guides, what, outline=outline)
    return m if occluders is None else m * (1.0 - occluders)


def composite_mask(mask: torch.Tensor, size: Sequence[int], options: CompositeOptions = CompositeOptions(),
                   what: str = "mask", guides: Optional[Sequence[torch.Tensor]] = None,
                   outline: bool = False) -> torch.Tensor:
    """The blend mask [..., 1, h, w] at latent size -> the composite's weight [..., H, W] at image size:
    ``image_mask`` (upsampled; refined with ``guides`` where ``refine_radius`` asks), dilated by ``mask_dilation``
    and feathered by ``feather`` pixels (neither for an ``outline`` mask, ``EditResult.blend_outline``, with
    ``recolour_margin`` off). The occluders that ``occluder_threshold`` finds, inside the dilated mask too, stay 0,
    and the feather's ramp runs along their edges as along the mask's."""
    return _composite_mask(mask, size, options, what, guides, outline)[0]


def _composite_mask(mask: torch.Tensor, size: Sequence[int], options: CompositeOptions, what: str,
                    guides: Optional[Sequence[torch.Tensor]], outline: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """composite_mask, and the image mask it grew from (before its dilation, with its occluders)."""
    dilation, feather = (0, 0) if outline and not options.recolour_margin else (options.mask_dilation, options.feather)
    m, occluders = _image_masks(mask, size, options, guides, what, reach=dilation, outline=outline)
    if occluders is None:
        return feather_mask(dilate_mask(m, dilation), feather), m
    keep = 1.0 - occluders
    return feather_mask(dilate_mask(m * keep, dilation) * keep, feather), m


# change_weight's ramp, in units of the threshold: the source's pixel below the first, the edit's above the second
CHANGE_RAMP = (0.5, 1.5)
# a frame whose 99th-percentile brightness (largest channel, 0..1) is below this is dim: change_weight's threshold
# scales with it there, down to DIM_FLOOR of itself (a black frame)
DIM_FRAME, DIM_FLOOR = 0.5, 0.1


def change_weight(edited: torch.Tensor, source: torch.Tensor, threshold: float,
                  mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """How much of the edit to keep where it hardly changed the source: frames [..., H, W, C] in 0..1 ->
    [..., H, W] in 0..1. With d the largest difference of a pixel's colour channels (the first three; an alpha
    channel does not count), 0 where d <= threshold / 2, 1 where d >= 1.5 * threshold, linear between
    (``CHANGE_RAMP``); a threshold of 0 gives ones. Pasting the source with 1 minus this
    weight moves no pixel of the edit by more than (1 - w) * d <= 9/16 * threshold (the ramp's worst point, d =
    3/4 threshold), so the edit's own changes stay; what goes is the VAE's round trip (halo, lost texture) where
    the edit had nothing to change. Per pixel, no blur: a blurred difference would spread the object's change
    into the halo around it.

    With ``mask`` (the image mask [..., H, W] the composite grew from), each pixel is also judged against the colour
    of the background around the mask (``background_distance``: like it within ``threshold``, largest channel
    difference). Where the source's pixel is unlike it and the edit's like it, the edit took the object away, and
    nothing is handed back: a shape swap's old corners, where the edit draws a background a little like the old
    object (a blue star's points on water), came back otherwise. Where both are like it, the pixel is background
    in both, and the source's comes back whole (at most 2 * threshold from the edit's): the faint rim of the new
    colour the VAE smears past the object's edge goes. Elsewhere (both the object: a shape swap's overlap, a
    recolour's shading), the ramp alone.

    The threshold is a colour distance on a frame whose brightest pixels are near white. On a dim frame (its 99th
    percentile below ``DIM_FRAME`` of white: night footage, a fade) every difference shrinks with the light, and a
    clear recolour fell under the threshold and was handed back (at a quarter of the light, all of it); there the
    threshold scales with the frame's brightness. No frame of the small world is that dim (its dimmest: 0.58)."""
    t = float(threshold)
    if t <= 0:
        return torch.ones(edited.shape[:-1], dtype=edited.dtype, device=edited.device)
    src = source[..., :3].to(edited.device, edited.dtype)
    flat = src.amax(-1).flatten(-2)  # per frame, its 99th percentile by rank (torch.quantile refuses 2^24 values)
    bright = flat.kthvalue(max(1, math.ceil(0.99 * flat.shape[-1])), dim=-1).values.float()  # [...]
    t = t * (bright / DIM_FRAME).clamp(DIM_FLOOR, 1.0).to(src.dtype)[..., None, None]  # [..., 1, 1]
    d = (edited[..., :3] - src).abs().amax(-1)
    low, high = CHANGE_RAMP
    w = ((d - low * t) / ((high - low) * t)).clamp(0.0, 1.0)
    if mask is None:
        return w
    lead = w.shape
    to_source, to_edit = background_distance((src.expand(*lead, 3), edited[..., :3]), mask.to(w.device).expand(lead))
    # NaN (a frame without a ring) compares False: the ramp alone
    w = torch.where((to_source > t) & (to_edit <= t), torch.ones_like(w), w)  # the edit took the object away
    return torch.where((to_source <= t) & (to_edit <= t), torch.zeros_like(w), w)  # background in both


def background_distance(frames: Sequence[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
    """For each of ``frames`` ([..., H, W, C] in 0..1, the first the source), every pixel's largest channel
    difference from the colour around the binary mask [..., H, W] on its frame in the first (``_ring_colours``: the
    median of a ring just outside the mask); NaN on a frame whose ring is too small to tell. Tensors [..., H, W]."""
    m, lead = _planes(mask)
    flat = [x[..., :3].reshape(-1, *x.shape[-3:-1], min(3, x.shape[-1])).to(m.device, torch.float32)
            for x in frames]
    background = torch.stack(_ring_colours(flat[0], m))[:, None, None, :]  # [N, 1, 1, C]
    return [(x - background).abs().amax(-1).reshape(*lead, *m.shape[-2:]) for x in flat]


def composite_alpha(mask: torch.Tensor, *, edited: torch.Tensor, source: torch.Tensor,
                    options: CompositeOptions = CompositeOptions(), outline: bool = False,
                    what: str = "mask") -> torch.Tensor:
    """The composite's weight of the edit [..., H, W] (1 = the edit's pixel, 0 = the source's): ``composite_mask``
    of the blend mask [..., 1, h, w], refined and cleared of occluders with the source frames and the edit as its
    guides where the options ask, times ``change_weight`` on the source's background (``options.change_threshold``).
    edited: the decoded edit [..., H, W, C]; source: the frames it was made from, broadcastable to it; outline: the
    mask is the region the sampler blended in (``EditResult.blend_outline``: no margin without
    ``recolour_margin``). What ``composite_frames`` blends with, and Blend Mask hands ComfyUI."""
    src = source[..., :3].to(edited.device, edited.dtype).expand(*edited.shape[:-1], -1)
    guides = (src, edited[..., :3]) if options.refine_radius > 0 or options.occluder_threshold > 0 else None
    alpha, m = _composite_mask(mask, edited.shape[-3:-1], options, what, guides, outline)
    alpha = alpha.to(edited.device)
    if options.change_threshold > 0:
        # a NaN edit pixel (an fp16 VAE's overflow) weighs 1: outside the mask alpha stays 0 and the source's pixel
        # comes back, inside it the NaN stays where the edit is (as without the threshold), and the mask stays in 0..1
        weight = change_weight(edited, src, options.change_threshold, mask=m).nan_to_num(nan=1.0)
        alpha = alpha * weight.to(alpha.dtype)
    return alpha


def _image_shape(x, what: str) -> tuple[int, ...]:
    if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5) or x.shape[-1] not in (1, 3, 4):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise VP2PInputError(f"{what}: expected frames [frames, height, width, channels] (or [targets, frames, ...]), "
                             f"got {shape}")
    return tuple(x.shape)


def composite_frames(*, edited: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                     options: CompositeOptions = CompositeOptions(), outline: bool = False) -> torch.Tensor:
    """The decoded edit over the source frames through the blend mask.

    edited: [F,H,W,C] or [n,F,H,W,C] frames in 0..1; source: the source clip [F,H,W,C], the frames the edit was
    made from, at the same size; mask: the edit's blend mask at latent size, [F,1,h,w] or [n,F,1,h,w]
    (``EditResult.blend_mask``); outline: ``EditResult.blend_outline`` (with ``options.recolour_margin`` off, such a
    mask is pasted without dilation or feather). Returns frames shaped as ``edited``, in the wider of the two
    inputs' dtypes: exactly the source's where the composite mask is 0 (outside the dilated mask), exactly the
    edit's where it is 1, a blend on the feather; with ``options.change_threshold`` the mask is also weighed by
    ``change_weight`` (the source's pixel where the edit hardly changed it), with ``options.refine_radius`` it is
    first snapped to the edges of the source and the edit (``refine_mask``), and with ``options.occluder_threshold``
    what is in front of the object keeps the source's pixels (``occluder_mask``). With ``options.composite`` off,
    ``edited`` as it is.
    """
    e_shape = _image_shape(edited, "edited")
    s_shape = _image_shape(source, "source")
    if not options.composite:
        return edited
    if len(s_shape) != 4 or s_shape != e_shape[-4:]:
        raise VP2PInputError(f"source: {s_shape[0]} frames of {s_shape[1]}x{s_shape[2]}x{s_shape[3]}, but the edit "
                             f"has {e_shape[-4]} frames of {e_shape[-3]}x{e_shape[-2]}x{e_shape[-1]}; expected the "
                             "clip the edit was made from, at the same size and frame count")
    lead = e_shape[:-3]  # ([n,] F)
    if not isinstance(mask, torch.Tensor) or mask.dim() != len(lead) + 3 or mask.shape[-3] != 1 or \
            tuple(mask.shape[:-3]) != lead:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise VP2PInputError(f"mask: expected the edit's blend mask [{', '.join(map(str, lead))}, 1, h, w], got "
                             f"{shape}")
    # in the wider of the two dtypes, so that a half-precision edit does not round the source's pixels
    dtype = torch.promote_types(edited.dtype, source.dtype)
    edit, src = edited.to(dtype), source.to(edited.device, dtype)
    alpha = composite_alpha(mask, edited=edit, source=src, options=options, outline=outline)[..., None].to(dtype)
    blend = alpha * edit + (1.0 - alpha) * src
    # exactly the source where alpha is 0 and exactly the edit where it is 1 (a NaN in the edit stays inside)
    return torch.where(alpha == 0, src, torch.where(alpha == 1, edit, blend))


def latent_pixels(pixels: int, factor: int) -> int:
    """Image pixels as whole latent pixels (rounded up): a dilation of 1..8 px is one latent pixel in SD."""
    return math.ceil(int(pixels) / int(factor))
