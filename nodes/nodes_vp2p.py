"""The Video-P2P nodes (classic ComfyUI node API). Glue only: every computation is in vp2p_core.

Flow: InflateUNet -> OneShotTune -> NullTextVideoInvert -> VideoP2PSampler <- AttentionEditController,
then DecodeFrames. Each stage is its own node, so ComfyUI's cache re-runs only what changed (a new target
prompt re-runs the editor and the sampler, not the tuning or the inversion).
"""
from __future__ import annotations

import logging
import re
import time

import torch

from vp2p_core import (Delta, Inversion, TuneConfig, VP2PInputError, blur_structure, build_edit_plan, invert,
                       one_shot_tune, sample_edit, trained_weights)
from vp2p_core.control import EDIT_MODES, SELF_REPLACE_ON
from vp2p_core.attention import FRAME_MODES
from vp2p_core.inversion import INVERSION_MODES

from . import controlnet as controlnet_mod, convert, files, maps as maps_mod
from .host import make_host
from .text import encode_text, encode_texts, tokenizer_from_clip
from .types import (VP2P_EDIT, VP2P_INVERSION, VP2P_MAPS, VP2P_MODEL, VP2P_STRUCTURE, VP2PEdit, VP2PMaps, VP2PModel,
                    VP2PStructure, vp2p_model_from_unet)

log = logging.getLogger(__name__)

CATEGORY = "Video-P2P"
PRECISIONS = {"fp32": "none", "bf16": "bf16", "fp16": "fp16"}
MAX_SEED = 0xFFFFFFFFFFFFFFFF

CACHE_TOOLTIP = ("Folder under models/vp2p where results are kept by a hash of the model, clip, prompt and "
                 "settings; the same inputs load the file instead of computing again. Empty: no cache.")


# ----------------------------------------------------------------------------------------------------------
# helpers

def scaled_latents(latent, model: VP2PModel, what: str = "latent") -> torch.Tensor:
    """ComfyUI LATENT (unscaled VAE output) -> the scaled [F, C, h, w] float32 latents the core works on."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise VP2PInputError(f"{what}: expected a LATENT (from VAEEncode), got {type(latent).__name__}")
    s = latent["samples"]
    if not isinstance(s, torch.Tensor) or s.dim() != 4:
        shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise VP2PInputError(f"{what}: expected image latents [frames, channels, h, w], got {shape}; "
                             "encode the frames with an SD 1.x/2.x VAE (VAEEncode)")
    cfg = model.video.unet.config
    if s.shape[1] != cfg.in_channels:
        raise VP2PInputError(f"{what}: {s.shape[1]} latent channels, the model takes {cfg.in_channels}")
    factor = 2 ** (len(cfg.block_out_channels) - 1)
    if s.shape[-1] % factor or s.shape[-2] % factor:
        raise VP2PInputError(
            f"{what}: latents of {s.shape[-2]}x{s.shape[-1]} do not divide by {factor}; resize the frames to a "
            f"multiple of {factor * 8} pixels (e.g. 512x512)")
    return s.detach().to("cpu", torch.float32) * model.latent_scale


def check_text_width(model: VP2PModel, emb: torch.Tensor, what: str) -> None:
    want = model.video.unet.config.cross_attention_dim
    if emb.shape[-1] != want:
        raise VP2PInputError(f"{what}: text embeddings of width {emb.shape[-1]}, but the model reads {want}; use the "
                             "CLIP of the same checkpoint")


def check_frames(model: VP2PModel, frames: int, what: str) -> None:
    if model.delta is not None and model.delta.num_frames != frames:
        raise VP2PInputError(f"{what}: {frames} frames, but the model was tuned on {model.delta.num_frames}; "
                             "tune on this clip, or use the clip it was tuned on")


def check_inversion_model(inv: Inversion, model: VP2PModel, what: str) -> None:
    if inv.model_fingerprint != model.fingerprint:
        raise VP2PInputError(
            f"{what}: made with the model {inv.model_fingerprint}, but this model is {model.fingerprint} "
            "(another checkpoint, LoRA or tuning); invert again with this model")


def check_inversion_latent(inv: Inversion, latent, model: VP2PModel, what: str) -> None:
    x = scaled_latents(latent, model, "latent")
    if x.shape[0] != inv.num_frames:
        raise VP2PInputError(f"{what}: made from a clip of {inv.num_frames} frames, but the latent has "
                             f"{x.shape[0]} frames")
    if tuple(x.shape[1:]) != tuple(inv.x_T.shape[1:]):
        raise VP2PInputError(f"{what}: made from latents of {tuple(inv.x_T.shape[1:])}, but the latent is "
                             f"{tuple(x.shape[1:])} (another frame size)")


def parse_reweight(words: str, values: str) -> dict:
    ws = [w for w in re.split(r"[,\s]+", words or "") if w]
    vs_text = [v for v in re.split(r"[,\s]+", values or "") if v]
    if not ws:
        if vs_text:
            raise VP2PInputError("reweight_values: values given without reweight_words")
        return {}
    try:
        vs = [float(v) for v in vs_text]
    except ValueError:
        raise VP2PInputError(f"reweight_values: expected numbers such as '2' or '2, 0.5', got {values!r}") from None
    if not vs:
        raise VP2PInputError(f"reweight_values: give a value for the reweight words {ws} (e.g. '2')")
    if len(vs) == 1:
        vs = vs * len(ws)
    if len(vs) != len(ws):
        raise VP2PInputError(f"reweight_values: {len(vs)} values for {len(ws)} reweight words {ws}; give one "
                             "value, or one per word")
    return dict(zip(ws, vs))


def target_lines(text: str) -> list[str]:
    return [t.strip() for t in (text or "").splitlines() if t.strip()]


def loss_report(delta: Delta, seconds: float, cached: bool) -> str:
    head = f"delta for {delta.num_frames} frames, {delta.steps} steps, prompt {delta.prompt!r}"
    head = "loaded from cache: " + head if cached else head + f", {seconds:.1f}s"
    losses = delta.losses
    if not losses:
        return head
    k = max(1, len(losses) // 10)
    marks = [f"{end}:{sum(losses[end - k:end]) / k:.4f}" for end in range(k, len(losses) + 1, k)]
    return head + f"\nloss (mean of {k} steps, by step) " + " ".join(marks)


TEMPORAL_TOOLTIP = ("Gen-1's temporal-consistency guidance w_t: 1 = the plain sampler at no extra cost; above 1 "
                    "trades edit strength for smoothness across frames, at one extra frame-independent UNet pass "
                    "per step.")
BLUR_TOOLTIP = ("Gen-1's structure fidelity t_s: 0 keeps the source's shape exactly, larger values blur the structure "
                "maps so only the coarse layout is kept (sigma = t_s pixels of a 64-pixel-wide copy).")


def _tip(t, tooltip, **opts):
    return (t, dict(opts, tooltip=tooltip))


# ----------------------------------------------------------------------------------------------------------
# nodes

class InflateUNet:
    DESCRIPTION = ("Turns the checkpoint's image UNet into Video-P2P's video model: frame attention (each frame "
                   "looks at the first), temporal attention over frames and frame-shared normalisation. Weight "
                   "patches such as LoRAs are kept. The MODEL itself is not changed.")
    CATEGORY = CATEGORY
    FUNCTION = "inflate"
    RETURN_TYPES = (VP2P_MODEL,)
    RETURN_NAMES = ("vp2p_model",)
    OUTPUT_TOOLTIPS = ("The video model (untuned), for OneShotTune, NullTextVideoInvert or LoadVP2PDelta.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": _tip("MODEL", "An SD 1.x or 2.x model from a checkpoint loader (LoRAs applied are kept)."),
            "frame_attention": _tip(list(FRAME_MODES), "What each frame's self-attention looks at: 'first' = the "
                                    "first frame (Video-P2P), 'first_prev' = the first and the previous frame "
                                    "(Tune-A-Video).", default="first"),
            "weight_dtype": _tip(["fp32", "fp16", "bf16"], "Precision of the video model's weights. fp32 is "
                                 "right for tuning and inversion; fp16/bf16 halve memory for editing only.",
                                 default="fp32"),
        }}

    def inflate(self, model, frame_attention, weight_dtype):
        unet, prediction, scale, latent_format, info = convert.comfy_model_to_unet(model, weight_dtype)
        patcher = convert.make_patcher(unet)
        vm = vp2p_model_from_unet(unet, prediction, scale, frame_attention, patcher=patcher,
                                  latent_format=latent_format, info=info)
        return (vm,)


class OneShotTune:
    DESCRIPTION = ("Tunes the video model on the clip (Tune-A-Video / Video-P2P one-shot tuning): only the attention "
                   "queries and the temporal attention learn. The result is a small weight delta on top of the "
                   "shared model; the input model is unchanged.")
    CATEGORY = CATEGORY
    FUNCTION = "tune"
    RETURN_TYPES = (VP2P_MODEL, "STRING")
    RETURN_NAMES = ("tuned_model", "log")
    OUTPUT_TOOLTIPS = ("The tuned video model (same base, plus the tuned delta).",
                       "Tuning summary: steps, time and the loss curve.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vp2p_model": _tip(VP2P_MODEL, "The video model from InflateUNet."),
            "latent": _tip("LATENT", "The clip's frames encoded with VAEEncode (8 frames at 512x512 is the "
                           "reference setting)."),
            "clip": _tip("CLIP", "The checkpoint's CLIP, to encode the source prompt."),
            "source_prompt": _tip("STRING", "What the clip shows, e.g. 'a rabbit is jumping on the grass'.",
                                  multiline=True, default="a rabbit is jumping on the grass"),
            "steps": _tip("INT", "Tuning steps. The paper uses 500; 300 is also used. 0 skips tuning.",
                          default=500, min=0, max=10000, step=1),
            "learning_rate": _tip("FLOAT", "AdamW learning rate (reference 3e-5).", default=3e-5, min=1e-7,
                                  max=1e-2, step=1e-6, round=1e-8),
            "seed": _tip("INT", "Seed of the noise and timesteps drawn during tuning.", default=33, min=0,
                         max=MAX_SEED, control_after_generate=False),
            "gradient_checkpointing": _tip("BOOLEAN", "Recompute activations in the backward pass: much less "
                                           "memory, about 30% slower.", default=True),
            "precision": _tip(list(PRECISIONS), "Autocast precision of the forward pass while tuning (weights "
                              "stay as they are). bf16 roughly halves memory on recent GPUs.", default="fp32"),
            "cache_dir": _tip("STRING", CACHE_TOOLTIP, default="vp2p_cache"),
        }}

    def tune(self, vp2p_model: VP2PModel, latent, clip, source_prompt, steps, learning_rate, seed,
             gradient_checkpointing, precision, cache_dir):
        if precision not in PRECISIONS:
            raise VP2PInputError(f"precision: expected one of {tuple(PRECISIONS)}, got {precision!r}")
        weights = next(vp2p_model.video.unet.parameters()).dtype
        if weights != torch.float32:
            raise VP2PInputError(f"vp2p_model: its weights are {str(weights).replace('torch.', '')}; tune with "
                                 "InflateUNet's weight_dtype fp32 (this node's precision sets bf16/fp16 autocast)")
        latents = scaled_latents(latent, vp2p_model)
        text = encode_text(clip, source_prompt, "source_prompt")
        check_text_width(vp2p_model, text, "clip")
        config = TuneConfig(steps=int(steps), learning_rate=float(learning_rate), seed=int(seed),
                            gradient_checkpointing=bool(gradient_checkpointing), autocast=PRECISIONS[precision])
        config.validate()
        key = files.cache_key(kind="delta", model=vp2p_model.fingerprint,
                              frame_attention=vp2p_model.video.frame_attention, latents=files.tensor_hash(latents),
                              text=files.tensor_hash(text), prompt=source_prompt, steps=config.steps,
                              lr=config.learning_rate, seed=config.seed, autocast=config.autocast)
        path = files.cache_path(cache_dir, "delta", key)
        start = time.perf_counter()
        if path is not None and path.is_file():
            delta = Delta.load(path)
            vp2p_model.check_delta_fits(delta, f"cached delta {path.name}")
            log.info("Video-P2P: tuned delta loaded from %s", path)
            return (vp2p_model.tuned(delta), loss_report(delta, 0.0, True))
        host = make_host(vp2p_model, previews=False)
        vm = vp2p_model.video
        with trained_weights(vm, vp2p_model.delta):
            delta = one_shot_tune(vm, latents, text, source_prompt, config, host)
        if vp2p_model.delta is not None:
            delta.config["tuned_from"] = vp2p_model.delta.fingerprint
        if path is not None:
            delta.save(path)
            log.info("Video-P2P: tuned delta cached at %s", path)
        return (vp2p_model.tuned(delta), loss_report(delta, time.perf_counter() - start, False))


class NullTextVideoInvert:
    DESCRIPTION = ("Inverts the clip with DDIM under the source prompt and, in null_text mode, optimises one "
                   "unconditional embedding per step so that guided sampling reproduces the clip exactly.")
    CATEGORY = CATEGORY
    FUNCTION = "invert"
    RETURN_TYPES = (VP2P_INVERSION,)
    RETURN_NAMES = ("inversion",)
    OUTPUT_TOOLTIPS = ("x_T, the per-step null embeddings and the source trajectory, for VideoP2PSampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vp2p_model": _tip(VP2P_MODEL, "The tuned video model (from OneShotTune or LoadVP2PDelta)."),
            "latent": _tip("LATENT", "The same clip latents the model was tuned on."),
            "clip": _tip("CLIP", "The checkpoint's CLIP, to encode the source prompt and the empty prompt."),
            "source_prompt": _tip("STRING", "What the clip shows; use the tuning prompt.", multiline=True,
                                  default="a rabbit is jumping on the grass"),
            "steps": _tip("INT", "DDIM steps; the sampler uses the same number.", default=50, min=1, max=1000),
            "guidance": _tip("FLOAT", "Classifier-free guidance the null-text optimisation reproduces; use the "
                             "sampler's.", default=7.5, min=1.0, max=30.0, step=0.1, round=0.01),
            "mode": _tip(list(INVERSION_MODES), "null_text: exact reconstruction (reference, slowest). fast: no "
                         "optimisation, the source branch follows its conditional prediction. negative_prompt: the "
                         "source prompt serves as the negative prompt.", default="null_text"),
            "inner_steps": _tip("INT", "Null-text: at most this many Adam steps per DDIM step.", default=10,
                                min=1, max=100),
            "early_stop": _tip("FLOAT", "Null-text: stop a step's optimisation once the loss is below this "
                               "(+2e-5 per step).", default=1e-5, min=0.0, max=1.0, step=1e-6, round=1e-8),
            "cache_dir": _tip("STRING", CACHE_TOOLTIP, default="vp2p_cache"),
        }, "optional": {
            "lr_scale": _tip("FLOAT", "Null-text: factor on the reference's learning rate (1e-2 * (1 - i/100)). "
                             "5 with inner_steps 4 reconstructs as well at about half the cost "
                             "(BENCHMARKS.md, Null-text budget).", default=1.0, min=0.01, max=100.0, step=0.1,
                             round=0.01),
        }}

    def invert(self, vp2p_model: VP2PModel, latent, clip, source_prompt, steps, guidance, mode, inner_steps,
               early_stop, cache_dir, lr_scale=1.0):
        if mode not in INVERSION_MODES:
            raise VP2PInputError(f"mode: expected one of {INVERSION_MODES}, got {mode!r}")
        latents = scaled_latents(latent, vp2p_model)
        check_frames(vp2p_model, latents.shape[0], "latent")
        src = encode_text(clip, source_prompt, "source_prompt")
        empty = encode_text(clip, "", "empty prompt")
        check_text_width(vp2p_model, src, "clip")
        key = files.cache_key(kind="inversion", model=vp2p_model.fingerprint,
                              frame_attention=vp2p_model.video.frame_attention, latents=files.tensor_hash(latents),
                              text=files.tensor_hash(src), empty=files.tensor_hash(empty), prompt=source_prompt,
                              steps=int(steps), guidance=float(guidance), mode=mode, inner=int(inner_steps),
                              early_stop=float(early_stop),
                              # keyed only when set, so inversions cached before the input existed still match
                              **({"lr_scale": float(lr_scale)} if float(lr_scale) != 1.0 else {}))
        path = files.cache_path(cache_dir, "inversion", key)
        if path is not None and path.is_file():
            inv = Inversion.load(path)
            check_inversion_model(inv, vp2p_model, f"cached inversion {path.name}")
            log.info("Video-P2P: inversion loaded from %s", path)
            return (inv,)
        host = make_host(vp2p_model)
        vm = vp2p_model.video
        with trained_weights(vm, vp2p_model.delta):
            inv = invert(vm, latents, src, empty, source_prompt, mode, int(steps), float(guidance),
                         int(inner_steps), float(early_stop), host, lr_scale=float(lr_scale))
        if path is not None:
            inv.save(path)
            log.info("Video-P2P: inversion cached at %s", path)
        return (inv,)


class AttentionEditController:
    DESCRIPTION = ("Describes the edit: source and target prompts and how the target's attention follows the "
                   "source's (word swap, refinement, reweighting, local blend). Cheap; change it and re-run only "
                   "the sampler.")
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = (VP2P_EDIT,)
    RETURN_NAMES = ("edit",)
    OUTPUT_TOOLTIPS = ("The edit for VideoP2PSampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": _tip("CLIP", "The checkpoint's CLIP: encodes the prompts and finds each word's tokens."),
            "source_prompt": _tip("STRING", "The prompt used for inversion.", multiline=True,
                                  default="a rabbit is jumping on the grass"),
            "target_prompts": _tip("STRING", "The edited prompt; one per line to make several edits at once.",
                                   multiline=True, default="a cat is jumping on the grass"),
            "edit_mode": _tip(list(EDIT_MODES), "replace: word swap (same number of words). refine: words added "
                              "or changed (aligned token by token). none: no attention control. auto: replace when "
                              "the word counts match, else refine.", default="auto"),
            "cross_replace": _tip("FLOAT", "Fraction of the steps during which the target's cross-attention maps "
                                  "come from the source (reference 0.2; more keeps more of the layout).",
                                  default=0.2, min=0.0, max=1.0, step=0.01),
            "self_replace": _tip("FLOAT", "Fraction of the steps during which the target's self-attention maps "
                                 "come from the source (reference 0.5; more keeps more of the motion/shape).",
                                 default=0.5, min=0.0, max=1.0, step=0.01),
            "self_replace_on": _tip(list(SELF_REPLACE_ON), "Which self-attention is replaced: temporal (the "
                                    "reference), frame attention (image P2P's spatial self-attention), both, "
                                    "or none. Try both when the edit moves the object or loses the layout.",
                                    default="temporal"),
            "blend_words": _tip("STRING", "Local blend: words of the source prompt whose region may change (e.g. "
                                "'rabbit'); the rest of the clip is kept. Empty: no local blend.", default=""),
            "blend_target_words": _tip("STRING", "Local blend: the matching words of the target prompt (e.g. "
                                       "'cat'); empty: the same words as blend_words.", default=""),
            "reweight_words": _tip("STRING", "Words of the target prompt whose attention is scaled, e.g. "
                                   "'origami'. Empty: no reweighting.", default=""),
            "reweight_values": _tip("STRING", "Scale for the reweight words: one value for all (e.g. '2') or one "
                                    "per word ('2, 0.5').", default=""),
            "mask_threshold": _tip("FLOAT", "Local blend: attention above this fraction of its maximum is inside "
                                   "the edited region (reference 0.3).", default=0.3, min=0.01, max=0.99,
                                   step=0.01),
            "blend_start": _tip("FLOAT", "Local blend starts after this fraction of the steps (reference 0.2).",
                                default=0.2, min=0.0, max=1.0, step=0.01),
        }}

    def build(self, clip, source_prompt, target_prompts, edit_mode, cross_replace, self_replace, self_replace_on,
              blend_words, blend_target_words, reweight_words, reweight_values, mask_threshold, blend_start):
        targets = target_lines(target_prompts)
        if not targets:
            raise VP2PInputError("target_prompts: expected at least one target prompt (one per line)")
        tok = tokenizer_from_clip(clip)
        plan = build_edit_plan(tok, source_prompt.strip(), targets, edit_mode, float(cross_replace),
                               float(self_replace), None, blend_words or None, blend_target_words or None,
                               parse_reweight(reweight_words, reweight_values) or None, float(mask_threshold),
                               float(blend_start), self_replace_on)
        plan.source_embedding = encode_text(clip, plan.source_prompt, "source_prompt")
        plan.target_embeddings = encode_texts(clip, targets, "target_prompts")
        plan.empty_embedding = encode_text(clip, "", "empty prompt")
        labels = [tok.labels(p) for p in [plan.source_prompt] + targets]
        return (VP2PEdit(plan=plan, token_labels=labels),)


class VideoP2PSampler:
    DESCRIPTION = ("Edits the inverted clip: source and target branches start from the same x_T, the target's "
                   "attention follows the edit, and local blend keeps everything outside the edited words. Optional "
                   "Gen-1 guidance: temporal_guidance smooths the edit across frames, structure makes it follow a "
                   "structure clip (depth, edges) through a ControlNet.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "LATENT", VP2P_MAPS)
    RETURN_NAMES = ("edited", "source", "attention_maps")
    OUTPUT_TOOLTIPS = ("The edited clip(s): all frames of target 1, then target 2, ... (decode with DecodeFrames).",
                       "The source branch's reconstruction of the clip (a check of the inversion).",
                       "Per-word cross-attention maps of this edit, for AttentionMaps.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vp2p_model": _tip(VP2P_MODEL, "The tuned video model the inversion was made with."),
            "inversion": _tip(VP2P_INVERSION, "From NullTextVideoInvert or LoadVP2PInversion."),
            "edit": _tip(VP2P_EDIT, "From AttentionEditController."),
            "guidance": _tip("FLOAT", "Classifier-free guidance (reference 7.5). With null-text inversion, the "
                             "inversion's guidance reconstructs the source exactly.", default=7.5, min=1.0,
                             max=30.0, step=0.1, round=0.01),
            "decoupled_guidance": _tip("BOOLEAN", "The target branch uses the plain empty-prompt embedding as its "
                                       "unconditional one (Video-P2P's decoupled guidance); off: it uses the "
                                       "optimised null embeddings too.", default=True),
        }, "optional": {
            "latent": _tip("LATENT", "Optional: the clip's latents, to check they are the clip the inversion was "
                           "made from (frame count and size)."),
            "temporal_guidance": _tip("FLOAT", TEMPORAL_TOOLTIP, default=1.0, min=0.0, max=4.0, step=0.05),
            "structure": _tip(VP2P_STRUCTURE, "Optional: Gen-1 structure guidance from the StructureGuidance node (a "
                              "ControlNet and a per-frame structure clip: depth, edges, masks); it steers the "
                              "edited branch only, the source branch keeps reproducing the clip."),
        }}

    def sample(self, vp2p_model: VP2PModel, inversion: Inversion, edit: VP2PEdit, guidance, decoupled_guidance,
               latent=None, temporal_guidance=1.0, structure=None):
        if not isinstance(edit, VP2PEdit):
            raise VP2PInputError(f"edit: expected the output of AttentionEditController, got {type(edit).__name__}")
        check_inversion_model(inversion, vp2p_model, "inversion")
        check_frames(vp2p_model, inversion.num_frames, "inversion")
        check_text_width(vp2p_model, edit.plan.target_embeddings, "edit")
        if latent is not None:
            check_inversion_latent(inversion, latent, vp2p_model, "inversion")
        vm = vp2p_model.video
        guide, extra = None, []
        if structure is not None:
            if not isinstance(structure, VP2PStructure):
                raise VP2PInputError(f"structure: expected the output of StructureGuidance, got "
                                     f"{type(structure).__name__}")
            structure.control.check_fits(vm.unet, "structure")
            guide = structure.guidance(tuple(inversion.x_T.shape[-2:]), inversion.num_frames)
            extra = [structure.control]
        host = make_host(vp2p_model, extra=extra)
        with trained_weights(vm, vp2p_model.delta):
            res = sample_edit(vm, inversion, edit.plan, float(guidance), bool(decoupled_guidance), host=host,
                              temporal_guidance=float(temporal_guidance), structure=guide,
                              num_frames=inversion.num_frames)
        scale = vp2p_model.latent_scale
        edited = {"samples": (res.edited.flatten(0, 1) / scale).float()}
        source = {"samples": (res.source / scale).float()}
        maps = VP2PMaps(maps=res.attention_maps, prompts=edit.prompts, token_labels=edit.token_labels,
                        blend_mask=res.blend_mask)
        return (edited, source, maps)


class StructureGuidance:
    DESCRIPTION = ("Gen-1's structure guidance: a ControlNet follows a per-frame structure clip (depth from any depth "
                   "node, edges, masks) while the sampler edits, so the edit keeps the source's shapes. structure_blur "
                   "sets how much of the shape is kept. Connect the output to VideoP2PSampler's structure input.")
    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = (VP2P_STRUCTURE, "IMAGE")
    RETURN_NAMES = ("structure", "structure_preview")
    OUTPUT_TOOLTIPS = ("Structure guidance for VideoP2PSampler's structure input.",
                       "The structure clip as the ControlNet sees it, blurred at structure_blur.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "structure": _tip("IMAGE", "The per-frame structure clip: one map per frame of the edited clip, at the "
                              "same size as its frames (depth from any depth node pack, edges, masks; a depth video "
                              "loaded with LoadVideo works too)."),
            "structure_blur": _tip("FLOAT", BLUR_TOOLTIP, default=0.0, min=0.0, max=16.0, step=0.1),
            "strength": _tip("FLOAT", "Scale of the ControlNet's residuals, as in Apply ControlNet (0: off).",
                             default=1.0, min=0.0, max=10.0, step=0.01),
            "start_percent": _tip("FLOAT", "The ControlNet acts from this fraction of the sampling steps on.",
                                  default=0.0, min=0.0, max=1.0, step=0.001),
            "end_percent": _tip("FLOAT", "The ControlNet stops at this fraction of the sampling steps.",
                                default=1.0, min=0.0, max=1.0, step=0.001),
        }, "optional": {
            "control_net": _tip("CONTROL_NET", "An SD 1.x/2.x ControlNet from ControlNetLoader (e.g. a depth "
                                "ControlNet for a depth clip). Give this or diffusers_controlnet."),
            "diffusers_controlnet": _tip("STRING", "Instead of control_net: the name of a diffusers ControlNetModel "
                                         "folder under models/controlnet (config.json + safetensors weights), "
                                         "loaded offline. Empty: use control_net.", default=""),
        }}

    def build(self, structure, structure_blur, strength, start_percent, end_percent, control_net=None,
              diffusers_controlnet=""):
        name = (diffusers_controlnet or "").strip()
        if control_net is None and not name:
            raise VP2PInputError("control_net: connect a ControlNet (ControlNetLoader) or give diffusers_controlnet, "
                                 "the name of a diffusers ControlNet folder under models/controlnet")
        if control_net is not None and name:
            raise VP2PInputError(f"diffusers_controlnet: {name!r} is given and control_net is connected; use one "
                                 "(empty diffusers_controlnet to use control_net)")
        if not isinstance(structure, torch.Tensor) or structure.dim() != 4 or structure.shape[-1] not in (1, 3):
            shape = tuple(structure.shape) if isinstance(structure, torch.Tensor) else type(structure).__name__
            raise VP2PInputError(f"structure: expected an IMAGE [frames, H, W, 1 or 3], got {shape}")
        if not 0.0 <= float(start_percent) <= float(end_percent) <= 1.0:
            raise VP2PInputError(f"start_percent / end_percent: expected 0 <= start <= end <= 1, got "
                                 f"{start_percent}, {end_percent}")
        handle = (controlnet_mod.comfy_controlnet(control_net) if control_net is not None
                  else controlnet_mod.load_diffusers_controlnet(name))
        images = structure.detach().to("cpu", torch.float32)
        maps = images.movedim(-1, 1)
        preview = blur_structure(maps.expand(-1, 3, -1, -1) if maps.shape[1] == 1 else maps, float(structure_blur))
        spec = VP2PStructure(control=handle, images=images, blur=float(structure_blur), strength=float(strength),
                             start=float(start_percent), end=float(end_percent))
        return (spec, preview.movedim(1, -1).clamp(0, 1).contiguous())


class DecodeFrames:
    DESCRIPTION = "Decodes video latents to frames a few at a time, so long clips fit in memory."
    CATEGORY = CATEGORY
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The frames, [frames, height, width, 3] in 0..1.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": _tip("VAE", "The checkpoint's VAE."),
            "latent": _tip("LATENT", "Latents to decode (e.g. the sampler's edited output)."),
            "frames_per_chunk": _tip("INT", "Frames decoded at once; lower it if decoding runs out of memory.",
                                     default=8, min=1, max=256),
        }}

    def decode(self, vae, latent, frames_per_chunk):
        if not isinstance(latent, dict) or "samples" not in latent:
            raise VP2PInputError(f"latent: expected a LATENT, got {type(latent).__name__}")
        samples = latent["samples"]
        if samples.dim() != 4 or samples.shape[0] == 0:
            raise VP2PInputError(f"latent: expected [frames, channels, h, w] latents, got {tuple(samples.shape)}")
        k = max(1, int(frames_per_chunk))
        out = []
        for i in range(0, samples.shape[0], k):
            images = vae.decode(samples[i:i + k])
            out.append(images.reshape(-1, *images.shape[-3:]).float().cpu())
        return (torch.cat(out),)


class AttentionMaps:
    DESCRIPTION = ("Shows the cross-attention map of every word of the source and target prompts (rows) as heat "
                   "maps, to choose blend words, and the local-blend mask.")
    CATEGORY = CATEGORY
    FUNCTION = "render"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("maps", "blend_mask")
    OUTPUT_TOOLTIPS = ("One image: a row per prompt, a column per token, brighter = more attention.",
                       "The last local-blend mask per output frame (all zero without local blend).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "attention_maps": _tip(VP2P_MAPS, "The attention_maps output of VideoP2PSampler."),
            "frame": _tip("INT", "Frame to show; -1 averages all frames.", default=-1, min=-1, max=4096),
            "cell_size": _tip("INT", "Size of each map in pixels.", default=96, min=16, max=512, step=8),
        }}

    def render(self, attention_maps: VP2PMaps, frame, cell_size):
        if not isinstance(attention_maps, VP2PMaps):
            raise VP2PInputError("attention_maps: expected the attention_maps output of VideoP2PSampler")
        grid = maps_mod.attention_grid(attention_maps.maps, attention_maps.token_labels, int(frame), int(cell_size))
        mask = attention_maps.blend_mask
        masks = maps_mod.mask_images(mask) if mask is not None else torch.zeros(1, 64, 64)
        return (grid, masks)


class SaveVP2PDelta:
    DESCRIPTION = "Saves the tuned delta of a video model (safetensors) to re-edit later without tuning again."
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("filename",)
    OUTPUT_TOOLTIPS = ("The name to give LoadVP2PDelta.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vp2p_model": _tip(VP2P_MODEL, "A tuned video model (from OneShotTune)."),
            "filename": _tip("STRING", "File name under ComfyUI's output folder; an existing file is replaced.",
                             default="vp2p/clip.delta.safetensors"),
        }}

    def save(self, vp2p_model: VP2PModel, filename):
        if vp2p_model.delta is None:
            raise VP2PInputError("vp2p_model: this model is not tuned; connect the output of OneShotTune")
        path = files.save_path(filename, "filename")
        vp2p_model.delta.save(path)
        rel = str(files.safe_name(filename, "filename"))
        return {"ui": {"text": [f"saved {rel}"]}, "result": (rel,)}


class LoadVP2PDelta:
    DESCRIPTION = ("Loads a saved tuned delta onto a video model of the same checkpoint; a delta made for another "
                   "checkpoint or clip length is refused.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (VP2P_MODEL,)
    RETURN_NAMES = ("tuned_model",)
    OUTPUT_TOOLTIPS = ("The tuned video model.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vp2p_model": _tip(VP2P_MODEL, "The untuned video model from InflateUNet (same checkpoint and LoRAs)."),
            "filename": _tip("STRING", "Name under models/vp2p or the output folder.",
                             default="vp2p/clip.delta.safetensors"),
        }, "optional": {
            "latent": _tip("LATENT", "Optional: the clip, to check the delta was tuned on as many frames."),
        }}

    @classmethod
    def IS_CHANGED(cls, vp2p_model=None, filename="", latent=None):
        return _file_state(filename)

    def load(self, vp2p_model: VP2PModel, filename, latent=None):
        path = files.load_path(filename, "filename")
        delta = Delta.load(path)
        vp2p_model.check_delta_fits(delta, f"delta file {filename!r}")
        if latent is not None:
            frames = scaled_latents(latent, vp2p_model).shape[0]
            if frames != delta.num_frames:
                raise VP2PInputError(f"delta file {filename!r}: tuned on {delta.num_frames} frames, but the latent "
                                     f"has {frames} frames")
        return (vp2p_model.tuned(delta),)


class SaveVP2PInversion:
    DESCRIPTION = "Saves an inversion (x_T, null embeddings, source trajectory) to edit the clip again later."
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("filename",)
    OUTPUT_TOOLTIPS = ("The name to give LoadVP2PInversion.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "inversion": _tip(VP2P_INVERSION, "From NullTextVideoInvert."),
            "filename": _tip("STRING", "File name under ComfyUI's output folder; an existing file is replaced.",
                             default="vp2p/clip.inversion.safetensors"),
        }}

    def save(self, inversion: Inversion, filename):
        path = files.save_path(filename, "filename")
        inversion.save(path)
        rel = str(files.safe_name(filename, "filename"))
        return {"ui": {"text": [f"saved {rel}"]}, "result": (rel,)}


class LoadVP2PInversion:
    DESCRIPTION = ("Loads a saved inversion; one made with another model or tuning, or from a clip of another length "
                   "or size, is refused.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (VP2P_INVERSION,)
    RETURN_NAMES = ("inversion",)
    OUTPUT_TOOLTIPS = ("The inversion, for VideoP2PSampler.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vp2p_model": _tip(VP2P_MODEL, "The tuned video model the inversion was made with."),
            "filename": _tip("STRING", "Name under models/vp2p or the output folder.",
                             default="vp2p/clip.inversion.safetensors"),
        }, "optional": {
            "latent": _tip("LATENT", "Optional: the clip, to check the frame count and size."),
        }}

    @classmethod
    def IS_CHANGED(cls, vp2p_model=None, filename="", latent=None):
        return _file_state(filename)

    def load(self, vp2p_model: VP2PModel, filename, latent=None):
        path = files.load_path(filename, "filename")
        inv = Inversion.load(path)
        check_inversion_model(inv, vp2p_model, f"inversion file {filename!r}")
        check_frames(vp2p_model, inv.num_frames, f"inversion file {filename!r}")
        if latent is not None:
            check_inversion_latent(inv, latent, vp2p_model, f"inversion file {filename!r}")
        return (inv,)


def _file_state(filename: str) -> str:
    """Re-run a loader when its file changes. A bad name is reported by the loader itself."""
    try:
        path = files.load_path(filename, "filename")
    except VP2PInputError as e:
        return f"missing:{e}"
    st = path.stat()
    return f"{path}:{st.st_mtime_ns}:{st.st_size}"


NODE_CLASS_MAPPINGS = {
    "InflateUNet": InflateUNet,
    "OneShotTune": OneShotTune,
    "NullTextVideoInvert": NullTextVideoInvert,
    "AttentionEditController": AttentionEditController,
    "VideoP2PSampler": VideoP2PSampler,
    "StructureGuidance": StructureGuidance,
    "DecodeFrames": DecodeFrames,
    "AttentionMaps": AttentionMaps,
    "SaveVP2PDelta": SaveVP2PDelta,
    "LoadVP2PDelta": LoadVP2PDelta,
    "SaveVP2PInversion": SaveVP2PInversion,
    "LoadVP2PInversion": LoadVP2PInversion,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "InflateUNet": "Inflate UNet (Video-P2P)",
    "OneShotTune": "One-Shot Tune (Video-P2P)",
    "NullTextVideoInvert": "Null-Text Video Inversion (Video-P2P)",
    "AttentionEditController": "Attention Edit (Video-P2P)",
    "VideoP2PSampler": "Video-P2P Sampler",
    "StructureGuidance": "Structure Guidance (Video-P2P, Gen-1)",
    "DecodeFrames": "Decode Frames (Video-P2P)",
    "AttentionMaps": "Attention Maps (Video-P2P)",
    "SaveVP2PDelta": "Save Tuned Delta (Video-P2P)",
    "LoadVP2PDelta": "Load Tuned Delta (Video-P2P)",
    "SaveVP2PInversion": "Save Inversion (Video-P2P)",
    "LoadVP2PInversion": "Load Inversion (Video-P2P)",
}
