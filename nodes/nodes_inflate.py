"""Inflate UNet: the checkpoint's image UNet as Video-P2P's video model (vp2p_core.inflation)."""
from __future__ import annotations

from comfy_api.latest import io

from vp2p_core import InflationOptions

from . import convert
from .schema import CATEGORY, VP2PModelIO, widgets
from .types import vp2p_model_from_unet


class InflateUNet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InflateUNet",
            display_name="Inflate UNet (Video-P2P)",
            category=CATEGORY,
            description="Turns the checkpoint's image UNet into Video-P2P's video model: frame attention (each frame "
                        "looks at the first) and temporal attention over frames; normalisation per frame or shared "
                        "by the clip (group_norm). Weight patches such as LoRAs are kept. The MODEL itself is not "
                        "changed.",
            inputs=[io.Model.Input("model", tooltip="An SD 1.x or 2.x model from a checkpoint loader (LoRAs applied "
                                                    "are kept).")]
                   + widgets(InflationOptions, ["frame_attention", "weight_dtype", "group_norm"]),
            outputs=[VP2PModelIO.Output("vp2p_model", display_name="vp2p_model",
                                        tooltip="The video model (untuned), for OneShotTune, "
                                                              "NullTextVideoInvert or LoadVP2PDelta.")],
        )

    @classmethod
    def execute(cls, model, **widget_values) -> io.NodeOutput:
        options = InflationOptions.from_values(widget_values)
        unet, prediction, scale, latent_format, info = convert.comfy_model_to_unet(model, options.weight_dtype)
        vm = vp2p_model_from_unet(unet, prediction_type=prediction, latent_scale=scale,
                                  frame_attention=options.frame_attention, group_norm=options.group_norm,
                                  latent_format=latent_format, info=info,
                                  fingerprints=convert.comfy_weight_fingerprints(model, options.weight_dtype))
        # wrapped once inflated: ComfyUI's ModelPatcher counts the model's size when it is made, and the temporal
        # layers are about 6% of SD 1.5's
        vm.patcher = convert.make_patcher(vm.video.unet)
        return io.NodeOutput(vm)
