"""Normalise Light: the clip as if evenly lit for the edit, and its light for Decode Frames to put back.

The maths is ``vp2p_core.light``: an RGB gain per frame, measured between frames, pixel by pixel or along the
camera's pan. Place it between the clip's frames and VAE Encode, and connect its ``light`` to every Decode Frames of
that clip; Image Composite Masked keeps the clip's own frames as its destination. Bypassing the node edits the clip
as it is lit.
"""
from __future__ import annotations

from comfy_api.latest import io

from vp2p_core import estimate_light, remove_light
from vp2p_core.light import check_frames

from . import host
from .schema import CATEGORY, VP2PLightIO
from .types import VP2PLight


class NormaliseLight(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NormaliseLight",
            display_name="Normalise Light (Video-P2P)",
            category=CATEGORY,
            description="Takes a change of light over the clip (exposure, white balance: an RGB gain per frame, "
                        "measured pixel by pixel between frames) out of its frames before VAE Encode, "
                        "so that one-shot tuning does not tie the edit to it; Decode Frames puts it back. In the "
                        "small world a clip whose light drifts or flickers garbled the edit without it. Frames are "
                        "compared along the camera's pan. A cut also reads as light, and in part a zoom or a pan "
                        "with strong parallax onto a much brighter or darker scene: bypass the node for such clips. "
                        "Light that differs across the frame (a shadow) stays in the clip.",
            inputs=[io.Image.Input("images", tooltip="The clip's frames, [frames, height, width, 3] in 0..1.")],
            outputs=[io.Image.Output("even_images", display_name="images",
                                     tooltip="The frames as if evenly lit: into VAE Encode."),
                     VP2PLightIO.Output("light", display_name="light",
                                        tooltip="The light taken out: into Decode Frames' light, for every decode "
                                                "of this clip's latents.")],
        )

    @classmethod
    def execute(cls, images) -> io.NodeOutput:
        check_frames(images, "images")  # named as the node's input, before the core names it ``frames``
        gains = estimate_light(images, what="images", host=host.progress_host())
        return io.NodeOutput(remove_light(images, gains),
                             VP2PLight(gains=gains, frame_size=(int(images.shape[1]), int(images.shape[2]))))
