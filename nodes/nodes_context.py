"""Context Windows (Video-P2P): clips of any length, seen through windows of frames (vp2p_core.context).

The windows come from ComfyUI's own schedule and fuse-weight functions (``comfy.context_windows``), with the
node ContextWindowsManual's names and defaults, so a ComfyUI user already knows them; the core takes them as
frame-index lists and weights. One exception: ComfyUI's ``relative`` fuse is a running average inside its own
sampler loop rather than a weight function, so its weights come from the core (the same average, except on a
looped window past the clip's end, which ComfyUI weighs by frame index, about 2 and peaking at frame 0); so do
overlap-linear's where ComfyUI's function fails (a window shorter than the overlap, or no overlap).
"""
from __future__ import annotations

from comfy_api.latest import io

from vp2p_core.context import ContextWindows, fuse_weights
from vp2p_core.options import ContextOptions

from .schema import CATEGORY, VP2PContextIO, widgets

CONTEXT_WIDGETS = ["context_length", "context_overlap", "context_schedule", "context_stride", "closed_loop",
                   "fuse_method"]


def comfy_context_windows(options: ContextOptions) -> ContextWindows:
    """ContextWindows whose schedule and weights are ComfyUI's (comfy.context_windows)."""
    import comfy.context_windows as cw

    handler = cw.IndexListContextHandler(
        context_schedule=cw.get_matching_context_schedule(options.context_schedule),
        fuse_method=cw.get_matching_fuse_method(options.fuse_method), context_length=options.context_length,
        context_overlap=options.context_overlap, context_stride=options.context_stride,
        closed_loop=options.closed_loop)

    def schedule(num_frames: int, step: int):
        handler._step = step  # what ComfyUI's set_step derives from the sampling sigmas: the step's index
        return handler.context_schedule.func(num_frames, handler, {})

    def weights(frames, num_frames: int):
        try:
            w = handler.fuse_method.func(len(frames), handler=handler, full_length=num_frames, idxs=list(frames))
        except RuntimeError:  # ComfyUI's overlap-linear fails on a window shorter than the overlap, or overlap 0
            w = fuse_weights(options.fuse_method, frames, num_frames, options.context_overlap)
        return [float(v) for v in w]

    relative = options.fuse_method == "relative"
    return ContextWindows(options=options, schedule=schedule, weight_function=None if relative else weights)


class VideoP2PContextWindows(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoP2PContextWindows",
            display_name="Context Windows (Video-P2P)",
            category=CATEGORY,
            description="Lets OneShotTune, NullTextVideoInvert and VideoP2PSampler work on clips of any length: the "
                        "model sees context_length frames at a time (plus the clip's first frame, which every window "
                        "shares for frame attention), and overlapping windows are blended. The settings are "
                        "ContextWindowsManual's. A clip no longer than one window is edited as a whole.",
            inputs=widgets(ContextOptions, CONTEXT_WIDGETS),
            outputs=[VP2PContextIO.Output("context", display_name="context",
                                          tooltip="Plug into OneShotTune, NullTextVideoInvert and VideoP2PSampler.")],
        )

    @classmethod
    def execute(cls, **widget_values) -> io.NodeOutput:
        return io.NodeOutput(comfy_context_windows(ContextOptions.from_values(widget_values)))
