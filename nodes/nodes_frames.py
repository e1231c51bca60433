"""Video Frames: the clip's frames taken from a VIDEO as Tune-A-Video samples them, decoding only as far as needed.

ComfyUI's Get Video Components decodes and stacks every frame of the file before Image From Batch keeps eight
(about 7.5 GB of float frames for ten seconds of 1080p). Here PyAV, which ComfyUI's video types are built on,
reads the VIDEO's stream frame by frame and stops after the last frame taken.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
from comfy_api.latest import io

from vp2p_core import VP2PInputError
from vp2p_core.frames import read_video, take_frames
from vp2p_core.options import FramesOptions

from . import host
from .schema import CATEGORY, widgets


def decoded_frames(video, options: FramesOptions, what: str = "video") -> tuple[torch.Tensor, float]:
    """[F, H, W, 3] float frames in 0..1 and their frame rate (the video's over frame_stride), from any ComfyUI
    VIDEO: a file's stream, read frame by frame, or frames made in the graph (Create Video), taken from memory."""
    try:
        source = video.get_stream_source()
    except ValueError:  # frames made in the graph: ComfyUI 0.3.64 cannot stream them (no container format)
        source = None
    if source is None:  # (or another extension's VIDEO with no file behind it)
        parts = video.get_components()  # they are in memory already
        frames = torch.stack(take_frames(iter(parts.images), options, what)).float()
        return frames, float(Fraction(parts.frame_rate) / options.frame_stride)
    progress = host.progress_host()
    loop = progress.loop(options.frames, "reading the video's frames")
    taken, rate = read_video(source, options, what, interrupt=progress.interrupt, on_take=loop.step)
    frames = torch.from_numpy(np.stack(taken)).float().div_(255.0)
    return frames, float(rate / options.frame_stride)


class VideoP2PVideoFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoP2PVideoFrames",
            display_name="Video Frames (Video-P2P)",
            category=CATEGORY,
            description="The clip's frames from a video: frames from start_frame, every frame_stride-th (Tune-A-"
                        "Video's sampling), decoded only up to the last one taken. Use it in place of Get Video "
                        "Components and Image From Batch, which decode the whole file first.",
            inputs=[io.Video.Input("video", tooltip="A video, e.g. from Load Video."),
                    *widgets(FramesOptions, ["frames", "start_frame", "frame_stride"])],
            outputs=[io.Image.Output("images", tooltip="The frames taken, at the video's own size."),
                     io.Float.Output("fps", tooltip="Their frame rate: the video's, over frame_stride (for Create "
                                                    "Video).")],
        )

    @classmethod
    def execute(cls, video, **values) -> io.NodeOutput:
        options = FramesOptions.from_values(values)
        if not hasattr(video, "get_stream_source"):
            raise VP2PInputError(f"video: expected a VIDEO (e.g. from Load Video), got {type(video).__name__}")
        frames, fps = decoded_frames(video, options)
        return io.NodeOutput(frames, fps)
