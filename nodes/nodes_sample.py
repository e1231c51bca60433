"""Video-P2P Sampler: the editing loop over the inverted clip (vp2p_core.sampling)."""
from __future__ import annotations

from comfy_api.latest import io

from vp2p_core import Inversion, SamplerOptions, VP2PInputError, edit_region, sample_edit, trained_weights
from vp2p_core.memory import call_rows, working_memory
from vp2p_core.sampling import clips_per_call, target_clips_per_call

from .host import make_host
from .schema import (CATEGORY, VP2PEditIO, VP2PInversionIO, VP2PMapsIO, VP2PModelIO, VP2PStructureIO, context_input,
                     widgets)
from .types import VP2PEdit, VP2PMaps, VP2PModel, VP2PStructure, check_context


class VideoP2PSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="VideoP2PSampler",
            display_name="Video-P2P Sampler",
            category=CATEGORY,
            description="Edits the inverted clip: source and target branches start from the same x_T, the target's "
                        "attention follows the edit, and local blend keeps everything outside the edited words. "
                        "edit_guidance pushes the targets away from the source prompt where a swapped word (a colour) "
                        "does not take. Optional Gen-1 guidance: temporal_guidance smooths the edit across frames, "
                        "structure makes it follow a structure clip (depth, edges) through a ControlNet.",
            inputs=[
                VP2PModelIO.Input("vp2p_model", tooltip="The tuned video model the inversion was made with."),
                VP2PInversionIO.Input("inversion", tooltip="From NullTextVideoInvert or LoadVP2PInversion."),
                VP2PEditIO.Input("edit", tooltip="From AttentionEditController."),
                *widgets(SamplerOptions, ["guidance", "decoupled_guidance"]),
                io.Latent.Input("latent", optional=True, tooltip="Optional: the clip's latents, to check they are the "
                                "clip the inversion was made from (frame count, size and content). A noise_mask on "
                                "it (Set Latent Noise Mask: one mask, or one per frame) is the edit region: outside "
                                "it the edit keeps the source's latents, as local blend does (with blend words too, "
                                "the two masks multiply)."),
                *widgets(SamplerOptions, ["temporal_guidance", "edit_guidance", "edit_guidance_steps"],
                         optional=["temporal_guidance", "edit_guidance", "edit_guidance_steps"]),
                VP2PStructureIO.Input("structure", optional=True, tooltip="Optional: Gen-1 structure guidance from the "
                                      "StructureGuidance node (a ControlNet and a per-frame structure clip: depth, "
                                      "edges, masks); it steers the edited branch only, the source branch keeps "
                                      "reproducing the clip."),
                context_input(),
            ],
            outputs=[
                io.Latent.Output("edited", display_name="edited",
                                 tooltip="The edited clip(s): all frames of target 1, then target 2, ... "
                                                   "(decode with DecodeFrames)."),
                io.Latent.Output("source", display_name="source",
                                 tooltip="The source branch's reconstruction of the clip (a check of the "
                                                   "inversion)."),
                VP2PMapsIO.Output("attention_maps", display_name="attention_maps",
                                  tooltip="Per-word cross-attention maps of this edit, for "
                                                            "AttentionMaps."),
            ],
        )

    @classmethod
    def execute(cls, vp2p_model: VP2PModel, inversion: Inversion, edit: VP2PEdit, latent=None, structure=None,
                context=None, **widget_values) -> io.NodeOutput:
        options = SamplerOptions.from_values(widget_values)
        check_context(context)
        if not isinstance(edit, VP2PEdit):
            raise VP2PInputError(f"edit: expected the output of AttentionEditController, got {type(edit).__name__}")
        inversion.check_model(vp2p_model.fingerprints)
        vp2p_model.check_frames(inversion.num_frames, "inversion")
        vp2p_model.video.check_text(edit.plan.target_embeddings, "edit")
        region = None
        if latent is not None:
            inversion.check_latents(vp2p_model.latents(latent, uses_noise_mask=True))
            if latent.get("noise_mask") is not None:
                region = edit_region(latent["noise_mask"], inversion.num_frames, tuple(inversion.x_T.shape[-2:]),
                                     what="latent's noise_mask")
        vm = vp2p_model.video
        guide, extra = None, []
        if structure is not None:
            if not isinstance(structure, VP2PStructure):
                raise VP2PInputError(f"structure: expected the output of StructureGuidance, got "
                                     f"{type(structure).__name__}")
            structure.control.check_fits(vm.unet, "structure")
            guide = structure.guidance(tuple(inversion.x_T.shape[-2:]), inversion.num_frames)
            extra = [structure.control]
        n = edit.plan.num_targets
        clips = clips_per_call(inversion, n, options)
        rows = call_rows(inversion.num_frames, context, frame_attention=vp2p_model.video.frame_attention,
                         steps=inversion.num_steps)
        memory = working_memory("infer", clips * rows, inversion.x_T.shape[-2:], vm.weight_dtype)
        if structure is not None:  # the ControlNet (a copy of the UNet's encoder) on the targets' rows: half a UNet's
            memory += working_memory("infer", target_clips_per_call(n, options) * rows, inversion.x_T.shape[-2:],
                                     vm.weight_dtype) // 2
        with trained_weights(vm, vp2p_model.delta):
            res = sample_edit(vm, inversion, edit.plan, options=options,
                              host=make_host(vp2p_model, extra=extra, memory_required=memory),
                              structure=guide, context=context, region=region)
        maps = VP2PMaps(maps=res.attention_maps, prompts=edit.prompts, token_labels=edit.token_labels,
                        blend_mask=res.blend_mask, blend_outline=res.blend_outline,
                        edit_shape=tuple(res.edited.shape[:2]) + tuple(res.edited.shape[-2:]))
        return io.NodeOutput(vp2p_model.comfy_latent(res.edited.flatten(0, 1)), vp2p_model.comfy_latent(res.source),
                             maps)
