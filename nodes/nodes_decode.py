"""Decode Frames and Attention Maps: what the sampler made, as images."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from vp2p_core import DecodeOptions, MapsOptions, VP2PInputError, restore_light
from vp2p_core.light import check_light_count
from vp2p_core.options import SD_VAE_FACTOR

from . import host, maps
from .schema import CATEGORY, VP2PLightIO, VP2PMapsIO, widgets
from .types import VP2PMaps, check_light


class DecodeFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DecodeFrames",
            display_name="Decode Frames (Video-P2P)",
            category=CATEGORY,
            description="Decodes video latents to frames a few at a time, so long clips fit in memory.",
            inputs=[io.Vae.Input("vae", tooltip="The checkpoint's VAE."),
                    io.Latent.Input("latent", tooltip="Latents to decode (e.g. the sampler's edited output)."),
                    *widgets(DecodeOptions, ["frames_per_chunk"]),
                    VP2PLightIO.Input("light", optional=True,
                                      tooltip="Normalise Light's light, where the latents were encoded from its "
                                              "frames: the clip's light is put back on the decoded frames (of "
                                              "every target prompt).")],
            outputs=[io.Image.Output("images", display_name="images",
                                     tooltip="The frames, [frames, height, width, 3] in 0..1.")],
        )

    @classmethod
    def execute(cls, vae, latent, light=None, **widget_values) -> io.NodeOutput:
        options = DecodeOptions.from_values(widget_values)
        check_light(light)
        if not isinstance(latent, dict) or "samples" not in latent:
            raise VP2PInputError(f"latent: expected a LATENT, got {type(latent).__name__}")
        samples = latent["samples"]
        if not isinstance(samples, torch.Tensor) or samples.dim() != 4 or samples.shape[0] == 0:
            found = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
            raise VP2PInputError(f"latent: expected [frames, channels, h, w] latents, got {found}")
        channels = getattr(vae, "latent_channels", None)  # ComfyUI's VAE: 4 for SD 1.x/2.x/XL, 16 for SD3 / Flux
        if isinstance(channels, int) and samples.shape[1] != channels:
            raise VP2PInputError(f"latent: {samples.shape[1]} latent channels, but the vae decodes {channels}; "
                                 "decode with the VAE of the checkpoint the latents were made with")
        if light is not None:
            check_light_count(samples.shape[0], light.gains, "latent")
        # the frames the light was measured on, or them as VAE Encode crops them to whole latent pixels
        fits = () if light is None or light.frame_size is None else \
            (tuple(light.frame_size), tuple(v // SD_VAE_FACTOR * SD_VAE_FACTOR for v in light.frame_size))
        k = options.frames_per_chunk
        out = None  # filled chunk by chunk: the frames exist once at full size, never as chunks plus a copy
        loop = host.progress_host().loop(-(-samples.shape[0] // k), "Decode Frames")
        for i in range(0, samples.shape[0], k):
            images = vae.decode(samples[i:i + k])
            images = images.reshape(-1, *images.shape[-3:])
            size = tuple(images.shape[1:3])
            if fits and size not in fits:
                raise VP2PInputError(f"light: measured on frames of {light.frame_size[0]}x{light.frame_size[1]}, but "
                                     f"the latent decodes to {size[0]}x{size[1]}; give the light of the clip these "
                                     "latents were encoded from")
            if light is not None:  # frame j of the batch is frame j mod F of the clip (one clip per target)
                images = restore_light(images, light.gains[torch.arange(i, i + images.shape[0]) % len(light.gains)])
            if out is None:
                out = torch.empty((samples.shape[0], *images.shape[1:]), dtype=torch.float32)
            out[i:i + images.shape[0]] = images
            loop.step(i // k + 1)  # the stop button, between chunks
        return io.NodeOutput(out)


class AttentionMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AttentionMaps",
            display_name="Attention Maps (Video-P2P)",
            category=CATEGORY,
            description="Shows the cross-attention map of every word of the source and target prompts (rows) as heat "
                        "maps, to choose blend words, and the local-blend mask.",
            inputs=[
                VP2PMapsIO.Input("attention_maps", tooltip="The attention_maps output of VideoP2PSampler."),
                *widgets(MapsOptions, ["frame", "cell_size"]),
            ],
            outputs=[
                io.Image.Output("maps", display_name="maps",
                                tooltip="One image: a row per prompt, a column per token, brighter = more "
                                                "attention."),
                io.Mask.Output("blend_mask", display_name="blend_mask",
                               tooltip="Where the edit is, per output frame: the last local-blend mask, "
                                                     "or for a shape swap the old and new objects' outlines, within "
                                                     "the sampler's noise_mask region (all one with neither: the "
                                                     "whole frame was edited, as Blend Mask gives it)."),
            ],
        )

    @classmethod
    def execute(cls, attention_maps: VP2PMaps, **widget_values) -> io.NodeOutput:
        options = MapsOptions.from_values(widget_values)
        if not isinstance(attention_maps, VP2PMaps):
            raise VP2PInputError("attention_maps: expected the attention_maps output of VideoP2PSampler")
        grid = maps.attention_grid(attention_maps.maps, attention_maps.token_labels, frame=options.frame,
                                   cell=options.cell_size)
        mask = attention_maps.blend_mask
        if mask is None and attention_maps.edit_shape is not None:  # no local blend: every pixel was edited
            n, f, h, w = attention_maps.edit_shape
            mask = torch.ones(n, f, 1, h, w)
        masks = maps.mask_images(mask) if mask is not None else torch.ones(1, 64, 64)  # maps made before the shape
        return io.NodeOutput(grid, masks)
