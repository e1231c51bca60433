"""One-Shot Tune: Tune-A-Video's tuning of the video model on the clip (vp2p_core.tuning)."""
from __future__ import annotations

import time

import torch
from comfy_api.latest import io

from vp2p_core import Delta, TuneOptions, VP2PInputError, one_shot_tune, trainable_parameter_names, trained_weights
from vp2p_core.memory import call_rows, working_memory
from vp2p_core.thumbnail import latent_thumbnail
from vp2p_core.tuning import AUTOCAST

from . import files
from .host import make_host
from .schema import CATEGORY, VP2PModelIO, cache_input, context_input, source_prompt_input, widgets
from .text import encode_text
from .types import VP2PModel, check_context, context_key, schedule_key

def loss_report(delta: Delta, seconds: float, cached: bool) -> str:
    head = f"delta for {delta.num_frames} frames, {delta.steps} steps, prompt {delta.prompt!r}"
    head = "loaded from cache: " + head if cached else head + f", {seconds:.1f}s"
    losses = delta.losses
    if not losses:
        return head
    k = max(1, len(losses) // 10)
    marks = [f"{end}:{sum(losses[end - k:end]) / k:.4f}" for end in range(k, len(losses) + 1, k)]
    return head + f"\nloss (mean of {k} steps, by step) " + " ".join(marks)


class OneShotTune(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="OneShotTune",
            display_name="One-Shot Tune (Video-P2P)",
            category=CATEGORY,
            description="Tunes the video model on the clip (Tune-A-Video / Video-P2P one-shot tuning): only the "
                        "attention queries and the temporal attention learn. The result is a small weight delta on "
                        "top of the shared model; the input model is unchanged.",
            inputs=[
                VP2PModelIO.Input("vp2p_model", tooltip="The video model from InflateUNet."),
                io.Latent.Input("latent", tooltip="The clip's frames encoded with VAEEncode (8 frames at 512x512 is "
                                                  "the reference setting)."),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP, to encode the source prompt."),
                source_prompt_input("What the clip shows, e.g. 'a rabbit is jumping on the grass'."),
                *widgets(TuneOptions, ["steps", "learning_rate", "seed", "gradient_checkpointing", "precision"]),
                cache_input(),
                context_input(),
            ],
            outputs=[VP2PModelIO.Output("tuned_model", display_name="tuned_model",
                                        tooltip="The tuned video model (same base, plus the tuned "
                                                               "delta)."),
                     io.String.Output("log", display_name="log",
                                      tooltip="Tuning summary: steps, time and the loss curve.")],
        )

    @classmethod
    def execute(cls, vp2p_model: VP2PModel, latent, clip, source_prompt: str, cache_dir: str, context=None,
                **widget_values) -> io.NodeOutput:
        options = TuneOptions.from_values(widget_values)
        check_context(context)
        if not source_prompt.strip():
            raise VP2PInputError("source_prompt: expected the words that describe the clip, got an empty prompt")
        vp2p_model.video.check_float32(
            "vp2p_model", "tune with InflateUNet's weight_dtype fp32 (this node's precision sets bf16/fp16 autocast)")
        latents = vp2p_model.latents(latent)
        text = encode_text(clip, source_prompt, "source_prompt")
        vp2p_model.video.check_text(text, "clip")
        parts = dict(kind="delta", model=vp2p_model.fingerprint,
                     frame_attention=vp2p_model.video.frame_attention, group_norm=vp2p_model.video.group_norm,
                     text=files.tensor_hash(text), prompt=files.prompt_key(source_prompt), options=options.cache_key(),
                     **context_key(context, frame_attention=vp2p_model.video.frame_attention,
                                   num_frames=latents.shape[0], fuse_weights=False),
                     **schedule_key(vp2p_model))
        key, near = files.latent_keys(parts, latents)

        def load(path) -> Delta:
            delta = Delta.load(path, what="cache_dir")
            vp2p_model.check_delta_fits(delta, f"cached delta {path.name}")
            if not delta.base_aliases and delta.base_fingerprint == vp2p_model.video.base_fingerprint:
                delta.base_aliases = vp2p_model.video.base_aliases  # cached before deltas recorded them
            # cached before deltas kept their clip's thumbnail and prediction type: the key holds these very latents
            # and this schedule
            if delta.source_thumbnail is None:
                delta.source_thumbnail = latent_thumbnail(latents)
            delta.prediction_type = delta.prediction_type or vp2p_model.video.schedule.prediction_type
            if delta.source_embedding is None:  # cached before deltas kept it: the key holds this very embedding
                delta.source_embedding = text.detach().to("cpu", torch.float32).clone()
            return delta

        def compute() -> Delta:
            unet = vp2p_model.video.unet
            trained = set(trainable_parameter_names(unet))
            rows = call_rows(latents.shape[0], context, frame_attention=vp2p_model.video.frame_attention,
                             steps=options.steps)
            memory = working_memory("train" if options.gradient_checkpointing else "null_text",
                                    rows, latents.shape[-2:],
                                    AUTOCAST[options.precision] or torch.float32,
                                    trained_parameters=sum(p.numel() for n, p in unet.named_parameters()
                                                           if n in trained))
            with trained_weights(vp2p_model.video, vp2p_model.delta):
                delta = one_shot_tune(vp2p_model.video, latents=latents, text=text, prompt=source_prompt,
                                      options=options,
                                      host=make_host(vp2p_model, previews=False, memory_required=memory),
                                      context=context)
            if vp2p_model.delta is not None:
                delta.config["tuned_from"] = vp2p_model.delta.fingerprint
            return delta

        start = time.perf_counter()
        delta, cached = files.cached_stage(cache_dir, "delta", key, load=load, compute=compute, near=near)
        return io.NodeOutput(vp2p_model.tuned(delta), loss_report(delta, time.perf_counter() - start, cached))
