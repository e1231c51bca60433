"""Blend Mask: the edit's mask (local blend's, and the sampler's noise_mask region) at image size, to composite the
decoded edit over the source frames.

The compositing itself is ComfyUI's Image Composite Masked (destination = the source frames, source = Decode
Frames' images, mask = this node's mask, x = y = 0): with a mask of one frame per image it blends frame by
frame, and where the mask is 0 it keeps the destination's pixel exactly (0 * edit + 1 * source). It pairs the
batches one to one; with several target prompts, repeat the source frames once per target (Repeat Image
Batch) so each target's frames meet the clip's. With ``source_images`` connected, ``refine_radius`` above 0 snaps
the mask's blocky edge to the edges of the clip and the edit (``vp2p_core.composite.refine_mask``), and
``change_threshold`` above 0 hands back to the source the pixels the edit hardly changed (the VAE's halo and lost
texture around the object, on the source's background; ``vp2p_core.composite.change_weight``), and
``occluder_threshold`` above 0 those of something in front of the object (``vp2p_core.composite.occluder_mask``).
``recolour_margin`` off pastes a recolour's mask without dilation or feather (the sampler's maps say which kind of
mask it is).
"""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from vp2p_core import CompositeOptions, VP2PInputError, composite_alpha, composite_mask

from . import host
from .schema import CATEGORY, VP2PMapsIO, widgets
from .types import VP2PMaps

log = logging.getLogger(__name__)

COMPOSITE_CHUNK = 8  # frames per composite_alpha call (progress and the stop button between calls)

# in the order of a saved workflow's widget values; recolour_margin came later, so it is last and optional
COMPOSITE_WIDGETS = ["mask_dilation", "feather", "change_threshold", "refine_radius", "occluder_threshold",
                     "recolour_margin"]


class BlendMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BlendMask",
            display_name="Blend Mask (Video-P2P)",
            category=CATEGORY,
            description="The edit's mask per frame (local blend's, within the sampler's noise_mask region when it had "
                        "one) at the frames' size, dilated and feathered, for Image "
                        "Composite Masked: the decoded edit over the source frames, so every pixel outside the mask "
                        "is the source's own (the VAE's round trip changes them otherwise).",
            inputs=[
                VP2PMapsIO.Input("attention_maps", tooltip="The attention_maps output of VideoP2PSampler."),
                io.Image.Input("images", tooltip="The frames the mask is for (DecodeFrames' images, or the source "
                                                 "frames): they set its size, a whole multiple of the latent size. "
                                                 "With change_threshold, refine_radius or occluder_threshold: "
                                                 "DecodeFrames' images."),
                io.Image.Input("source_images", optional=True,
                               tooltip="The frames the edit was made from (Image Composite Masked's destination: the "
                                       "clip's frames, or them repeated once per target). Needed by "
                                       "change_threshold (pixels the edit hardly changed keep the source's), "
                                       "refine_radius (the mask snaps to the frames' edges) and occluder_threshold "
                                       "(what is in front of the object keeps the source's pixels)."),
                *widgets(CompositeOptions, COMPOSITE_WIDGETS, optional=["recolour_margin"]),
            ],
            outputs=[io.Mask.Output("mask", display_name="mask",
                                    tooltip="One mask per edited frame (all frames of target 1, then target 2, ...) "
                                            "at the frames' size: 1 = the edit, 0 = the source, between = the "
                                            "feather. All ones without local blend or a noise_mask (the whole frame "
                                            "is the edit).")],
        )

    @classmethod
    def execute(cls, attention_maps: VP2PMaps, images, source_images=None, **widget_values) -> io.NodeOutput:
        options = CompositeOptions.from_values(widget_values)
        if not isinstance(attention_maps, VP2PMaps):
            raise VP2PInputError("attention_maps: expected the attention_maps output of VideoP2PSampler")
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise VP2PInputError(f"images: expected frames [frames, height, width, channels], got {shape}")
        size = tuple(images.shape[1:3])
        mask = attention_maps.blend_mask  # [n, F, 1, h, w] at latent size, or None without local blend
        # (targets, frames) of the edit; None for maps made before they recorded it (and without a mask)
        shape = tuple(mask.shape[:2]) if mask is not None else \
            tuple(attention_maps.edit_shape[:2]) if attention_maps.edit_shape is not None else None
        if shape is not None and images.shape[0] not in (shape[1], shape[0] * shape[1]):
            n, f = shape
            raise VP2PInputError(f"images: {images.shape[0]} frames, but the edit has {f} frames"
                                 + (f" for each of {n} targets" if n > 1 else "")
                                 + "; expected the decoded edit or the clip's frames")
        if shape is not None and shape[0] > 1 and source_images is not None and \
                isinstance(source_images, torch.Tensor) and source_images.shape[0] == shape[1]:
            log.warning("Blend Mask: %d masks for %d target prompts, but source_images has the clip's %d frames: "
                        "Image Composite Masked with these frames as its destination keeps target 1 alone (it "
                        "cuts the edit and the masks to the destination's length); give it the frames through "
                        "Repeat Image Batch (amount %d)", shape[0] * shape[1], shape[0], shape[1], shape[0])
        if mask is None:  # every pixel edited: one all-one mask per edited frame (n targets x F frames)
            return io.NodeOutput(torch.ones(images.shape[0] if shape is None else shape[0] * shape[1], *size))
        n, f = shape
        if options.change_threshold <= 0 and options.refine_radius <= 0 and options.occluder_threshold <= 0:
            return io.NodeOutput(composite_mask(mask, size, options, what="images",
                                                outline=attention_maps.blend_outline).flatten(0, 1).float().cpu())
        edited, source = cls._edit_and_source(images, source_images, n, f, options.change_threshold > 0)
        # colour channels only: an RGBA or grey clip beside an RGB edit is fine. Without the occluder test every
        # frame's weight is its own (the guided filter, the ring around the mask, dilation and feather are per
        # frame), so frames go in chunks, with ComfyUI's progress bar and stop button between them: 48 frames at
        # 512 px with refine_radius 8 take about half a minute on a 2-core CPU. The occluder test reads the object's
        # colour over the whole clip (occluder_mask), so with it the clip goes in one piece
        chunk = COMPOSITE_CHUNK if options.occluder_threshold <= 0 else f
        alpha = torch.empty(n, f, *size, dtype=torch.float32)
        loop = host.progress_host().loop(-(-f // chunk), "Blend Mask")
        for i in range(0, f, chunk):
            part = slice(i, i + chunk)
            alpha[:, part] = composite_alpha(mask[:, part], edited=edited[:, part], source=source[:, part],
                                             options=options, outline=attention_maps.blend_outline,
                                             what="images").float().cpu()
            loop.step(i // chunk + 1)
        return io.NodeOutput(alpha.flatten(0, 1))

    @staticmethod
    def _edit_and_source(images: torch.Tensor, source_images, n: int, f: int,
                         refuse_same: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoded edit ([n*F,H,W,C]) as [n,F,H,W,C] and the source frames ([F,H,W,C], or [n*F,H,W,C] repeated
        per target for Image Composite Masked) as [1 or n,F,H,W,C], checked: what change_threshold and
        refine_radius and occluder_threshold compare."""
        if source_images is None:
            raise VP2PInputError("source_images: change_threshold, refine_radius and occluder_threshold above 0 "
                                 "compare the edit with the frames it was made from; connect them (Image Composite "
                                 "Masked's destination) or set them to 0")
        if images.shape[0] != n * f:
            raise VP2PInputError(f"images: {images.shape[0]} frames; with change_threshold, refine_radius or "
                                 f"occluder_threshold, expected "
                                 f"the decoded edit ({n * f} frames: {f} for each of {n} targets)")
        if not isinstance(source_images, torch.Tensor) or source_images.dim() != 4 or \
                source_images.shape[0] not in (f, n * f) or tuple(source_images.shape[1:3]) != tuple(images.shape[1:3]):
            shape = tuple(source_images.shape) if isinstance(source_images, torch.Tensor) else \
                type(source_images).__name__
            repeated = f" (or {n * f}: repeated per target)" if n > 1 else ""
            raise VP2PInputError(f"source_images: expected the edit's {f} frames{repeated} of {images.shape[1]}x"
                                 f"{images.shape[2]} ([frames, height, width, channels]), got {shape}")
        if refuse_same and (images is source_images or torch.equal(images[..., :3],
                                                                  source_images[..., :3].to(images.device))):
            raise VP2PInputError("images: the same frames as source_images; with change_threshold, expected "
                                 "DecodeFrames' images (the edit), or the mask would be empty")
        edited = images.reshape(n, f, *images.shape[1:])
        source = source_images.reshape(-1, f, *source_images.shape[1:])  # [1 or n, F, H, W, C]
        return edited, source
