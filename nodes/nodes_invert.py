"""Null-Text Video Inversion: DDIM inversion and null-text optimisation of the clip (vp2p_core.inversion)."""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from vp2p_core import Inversion, InversionOptions, VP2PInputError, invert, trained_weights
from vp2p_core.memory import call_rows, working_memory
from vp2p_core.text import check_same_encoder, same_prompt
from vp2p_core.thumbnail import latent_thumbnail

from . import files
from .host import make_host
from .schema import CATEGORY, VP2PInversionIO, VP2PModelIO, cache_input, context_input, source_prompt_input, widgets
from .text import encode_text
from .types import VP2PModel, check_context, context_key, schedule_key

log = logging.getLogger(__name__)


class NullTextVideoInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="NullTextVideoInvert",
            display_name="Null-Text Video Inversion (Video-P2P)",
            category=CATEGORY,
            description="Inverts the clip with DDIM under the source prompt and, in null_text mode, optimises one "
                        "unconditional embedding per step so that guided sampling reproduces the clip exactly.",
            inputs=[
                VP2PModelIO.Input("vp2p_model", tooltip="The tuned video model (from OneShotTune or LoadVP2PDelta)."),
                io.Latent.Input("latent", tooltip="The same clip latents the model was tuned on."),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP, to encode the source prompt and the empty "
                                              "prompt."),
                source_prompt_input("What the clip shows; use the tuning prompt."),
                *widgets(InversionOptions, ["steps", "guidance", "mode", "inner_steps", "early_stop"]),
                cache_input(),
                *widgets(InversionOptions, ["lr_scale", "early_stop_ratio", "null_text_checkpointing"],
                         optional=["lr_scale", "early_stop_ratio", "null_text_checkpointing"]),
                context_input(),
            ],
            outputs=[VP2PInversionIO.Output("inversion", display_name="inversion",
                                            tooltip="x_T, the per-step null embeddings and the source "
                                                                 "trajectory, for VideoP2PSampler.")],
        )

    @classmethod
    def execute(cls, vp2p_model: VP2PModel, latent, clip, source_prompt: str, cache_dir: str, context=None,
                **widget_values) -> io.NodeOutput:
        options = InversionOptions.from_values(widget_values)
        check_context(context)
        if not source_prompt.strip():
            raise VP2PInputError("source_prompt: expected the words that describe the clip (the tuning prompt), "
                                 "got an empty prompt")
        weights = vp2p_model.video.weight_dtype
        if options.mode == "null_text":
            vp2p_model.video.check_float32(
                "vp2p_model", "null-text inversion needs InflateUNet's weight_dtype fp32 (or use mode fast)")
        latents = vp2p_model.latents(latent)
        vp2p_model.check_clip(latents, "latent")
        tuned_prompt = None if vp2p_model.delta is None else vp2p_model.delta.prompt
        if tuned_prompt is not None and not same_prompt(tuned_prompt, source_prompt):
            log.warning("Video-P2P: source_prompt %r is not the prompt the model was tuned with (%r): the inversion "
                        "reconstructs the clip less well under another prompt", source_prompt, vp2p_model.delta.prompt)
        src = encode_text(clip, source_prompt, "source_prompt")
        empty = encode_text(clip, "", "empty prompt")
        vp2p_model.video.check_text(src, "clip")
        tuned_with = None if vp2p_model.delta is None else vp2p_model.delta.source_embedding
        if tuned_with is not None and same_prompt(tuned_prompt, source_prompt):
            check_same_encoder(tuned_with, src, "the model was tuned with", "invert with the CLIP the tuning used (the "
                               "same CLIPSetLastLayer and LoRAs), or tune again with this one")
        parts = dict(kind="inversion", model=vp2p_model.fingerprint,
                     frame_attention=vp2p_model.video.frame_attention, group_norm=vp2p_model.video.group_norm,
                     text=files.tensor_hash(src), empty=files.tensor_hash(empty),
                     prompt=files.prompt_key(source_prompt), options=options.cache_key(),
                     **context_key(context, frame_attention=vp2p_model.video.frame_attention,
                                   num_frames=latents.shape[0]),
                     **schedule_key(vp2p_model),
                     # half weights: their DDIM latents are float32 now (bf16 / fp16 before; not reused)
                     **({} if weights == torch.float32 else {"weights": str(weights), "latent_dtype": "float32"}))
        key, near = files.latent_keys(parts, latents)

        def load(path) -> Inversion:
            inv = Inversion.load(path, what="cache_dir")
            inv.check_model(vp2p_model.fingerprints, f"cached inversion {path.name}")
            if inv.source_thumbnail is None:  # cached before inversions kept one; the key holds these very latents
                inv.source_thumbnail = latent_thumbnail(latents)
            if not inv.model_aliases and inv.model_fingerprint == vp2p_model.fingerprint:  # cached before aliases
                inv.model_aliases = vp2p_model.fingerprints[1:]
            return inv

        # null-text asks for the room to run without checkpointing (auto then checks what is free), unless it is on
        stage = ("infer" if options.mode != "null_text" else
                 "null_text_checkpointed" if options.null_text_checkpointing == "on" else "null_text")
        rows = call_rows(latents.shape[0], context, frame_attention=vp2p_model.video.frame_attention,
                         steps=options.steps)
        memory = working_memory(stage, rows, latents.shape[-2:], weights)

        def compute() -> Inversion:
            with trained_weights(vp2p_model.video, vp2p_model.delta):
                return invert(vp2p_model.video, latents, source_embedding=src, empty_embedding=empty,
                              prompt=source_prompt, options=options, host=make_host(vp2p_model, memory_required=memory),
                              context=context)

        inv, _ = files.cached_stage(cache_dir, "inversion", key, load=load, compute=compute, near=near)
        return io.NodeOutput(inv)
