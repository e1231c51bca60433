"""The editing loop: source and target branches from the same x_T, decoupled guidance, attention control.

Batch per step (clips): [source cond, target cond x n] (the controlled rows the controller reads; while edit
guidance acts, n contrast rows follow them), then [source uncond] when it is needed, then [target uncond x n].
The source branch needs no unconditional pass when its trajectory is already known (null-text inversion at the
same guidance: the inversion's guided steps *are* the source branch) or when it samples with its conditional
prediction alone (``fast``, ``negative_prompt``): 1 + 2n clip evaluations per step instead of 2 + 2n.

Edit guidance (``edit_guidance`` = s, for the first ``edit_guidance_steps`` of the steps) adds n contrast rows
after the targets: the source prompt at each target's latents, under the target's attention control; the target's
guided eps gains s (eps(x_tgt, target) - eps(x_tgt, source)). Like a negative prompt that names the source, but
added to the usual guidance instead of replacing its unconditional pass, and with the attention control on both
sides, so the difference is the swapped words' alone: the new colour wins over the old one that the inverted
noise still carries (the small world's recolours that failed, BENCHMARKS.md). Not in the reference: 0 is off.

An edit region (``region``; ComfyUI's ``noise_mask``, from SetLatentNoiseMask) confines the edit as local blend
does: after every step the targets' latents are the source branch's outside it, and mixed in proportion where it is
soft. With local blend too, the two masks multiply. The region is the user's; local blend's mask is the model's.

Gen-1's temporal-consistency guidance (``temporal_guidance`` = w_t) mixes in the prediction of the same
network with frames made independent: eps = eps_img(x, null) + w_t (eps_vid(x, null) - eps_img(x, null))
+ w (eps_vid(x, c) - eps_vid(x, null)). w_t = 1 is the plain sampler and costs nothing extra; other values
add one unconditional, frame-independent evaluation per target and step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from .context import ContextWindows, Window, fuse, whole_clip, windows_signature
from .control import AttentionController, EditPlan, blend_layer_names, fraction_pair
from .errors import VP2PInputError
from .host import Host
from .inflation import cross_attention_layers, frame_state, video_forward
from .inversion import Inversion
from .model import VideoModel
from .options import SamplerOptions
from .schedule import DDIMSchedule
from .structure import StructureGuidance
from .text import check_same_encoder, same_prompt

log = logging.getLogger(__name__)


@dataclass
class EditResult:
    edited: torch.Tensor  # [n,F,C,h,w]
    source: torch.Tensor  # [F,C,h,w]: the source branch's reconstruction
    attention_maps: Optional[torch.Tensor] = None  # [1+n,F,hb,wb,77] averaged over steps and blend layers
    # [n,F,1,h,w] where the edit is: AttentionController.edit_mask, within the edit region when there is one (or the
    # region alone without local blend; the region wherever it is above 0)
    blend_mask: Optional[torch.Tensor] = None
    # blend_mask is the very region the sampler blended in (an outline blend: a recolour), so outside it the edit's
    # latents are the source's; False for a grown blend (a shape swap), whose new outline may pass the mask, and for
    # an edit region alone (the composite gives a user's mask its margin)
    blend_outline: bool = False
    stats: dict = field(default_factory=dict)


def edit_region(mask: torch.Tensor, num_frames: int, latent_hw: tuple[int, int],
                what: str = "region") -> torch.Tensor:
    """A user's edit region -> [F, 1, h, w] float32 on the latent grid. ``mask``: [h, w], [B, h, w] or [B, 1, h, w]
    at any size (ComfyUI's noise_mask is at image size), values in 0..1, one mask for every frame (B = 1) or one
    per frame (B = F); resized bilinearly, as ComfyUI's samplers resize a noise_mask. Unlike them, another count
    of masks is refused rather than repeated or cut to the batch: on a clip, that is a mask for other frames.
    Outside the region the edit is the source branch's reconstruction of the clip, not the input latents."""
    if (not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3, 4) or (mask.dim() == 4 and mask.shape[1] != 1)
            or mask.numel() == 0):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise VP2PInputError(f"{what}: expected a mask [h, w], [frames, h, w] or [frames, 1, h, w], got {shape}")
    m = mask.detach().to("cpu", torch.float32).reshape(-1, 1, *mask.shape[-2:])
    if m.shape[0] not in (1, num_frames):
        raise VP2PInputError(f"{what}: {m.shape[0]} masks of {tuple(m.shape[-2:])} for a clip of {num_frames} "
                             "frames; give one mask for every frame or one per frame")
    if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise VP2PInputError(f"{what}: expected values in 0..1, got {float(m.min()):.3g}..{float(m.max()):.3g}")
    if tuple(m.shape[-2:]) != tuple(latent_hw):
        m = F.interpolate(m, size=tuple(latent_hw), mode="bilinear", align_corners=False).clamp(0, 1)
    return m.expand(num_frames, -1, -1, -1).contiguous()


REGION_FLOOR = 1.0 / 255  # an edit region at or below this is noise (a mask read from an 8-bit image), not a region


def check_edit_inputs(model: VideoModel, inversion: Inversion, plan: EditPlan) -> None:
    inversion.check_model(model.fingerprints)
    if inversion.schedule != model.schedule:  # the fingerprint is the weights': the same ones read as eps or v
        made, now = inversion.schedule.to_dict(), model.schedule.to_dict()
        differ = ", ".join(f"{k} {made[k]!r} (the model: {now[k]!r})" for k in made if made[k] != now.get(k))
        raise VP2PInputError(f"inversion: made with another noise schedule, {differ}; invert again with this model")
    most = model.schedule.max_steps
    if inversion.num_steps > most:  # saved before the steps' limit: DDIMSchedule would name only "steps"
        raise VP2PInputError(f"inversion: made with {inversion.num_steps} DDIM steps, more than the {most} that "
                             "reach the last timestep; invert again with at most that many")
    if plan.source_embedding is None or plan.target_embeddings is None or plan.empty_embedding is None:
        raise VP2PInputError("edit: the plan has no text embeddings (source, targets, empty); encode its prompts")
    if plan.target_embeddings.shape[0] != plan.num_targets:
        raise VP2PInputError(
            f"edit: {plan.num_targets} target prompts but {plan.target_embeddings.shape[0]} target embeddings")
    if plan.source_embedding.shape[-1] != inversion.source_embedding.shape[-1]:
        raise VP2PInputError(
            f"edit: text embeddings of width {plan.source_embedding.shape[-1]} but the inversion used "
            f"{inversion.source_embedding.shape[-1]} (another text encoder)")
    if inversion.prompt and not same_prompt(plan.source_prompt, inversion.prompt):  # the embeddings: below
        raise VP2PInputError(
            f"source_prompt: {plan.source_prompt!r} is not the prompt the inversion was made with "
            f"({inversion.prompt!r}); expected the inversion's source prompt (or invert again with this one)")
    # the source branch runs on the inversion's embedding, the targets on the plan's: the same encoder must have made
    # both (a CLIPSetLastLayer or a CLIP LoRA on one path only would edit with mismatched branches, silently)
    check_same_encoder(inversion.source_embedding, plan.source_embedding, "the inversion was made with",
                       "encode the edit with the CLIP the inversion used (the same CLIPSetLastLayer and LoRAs)")


def independent_prediction(model: VideoModel, schedule: DDIMSchedule, x: torch.Tensor, t: int, uncond: torch.Tensor,
                           residuals: dict) -> torch.Tensor:
    """eps_img(x, null): the same network with each frame on its own, no attention control.

    ``residuals`` are the ControlNet's for these rows from the main pass (a ControlNet sees frames one by
    one, so they are the same here and are not computed again)."""
    n, f = x.shape[:2]
    state = frame_state(model.unet)
    ctrl, state.controller = state.controller, None
    try:
        flat = x.flatten(0, 1)
        out = video_forward(model.unet, flat, t, uncond.repeat_interleave(f, dim=0), f, independent=True, **residuals)
    finally:
        state.controller = ctrl
    return schedule.to_eps(out, t, flat).view(x.shape)


def _rows(extra: dict, start: int) -> dict:
    """The residuals of the batch rows from ``start`` on."""
    if not extra:
        return {}
    return {"down_block_additional_residuals": tuple(r[start:] for r in extra["down_block_additional_residuals"]),
            "mid_block_additional_residual": extra["mid_block_additional_residual"][start:]}


def inverted_at(inversion: Inversion, guidance: float) -> bool:
    """Whether ``guidance`` is the one the inversion was made at (what its null embeddings reproduce the clip at)."""
    return abs(guidance - inversion.guidance) < 1e-9


def replays_source_trajectory(inversion: Inversion, options: SamplerOptions) -> bool:
    """Whether the source branch replays the null-text inversion's stored path (made at the sampler's guidance)
    rather than computing it, with its unconditional pass, at every step."""
    return (inversion.mode == "null_text" and options.reuse_source_trajectory and inversion.trajectory is not None
            and inverted_at(inversion, options.guidance))


def target_clips_per_call(num_targets: int, options: SamplerOptions) -> int:
    """The targets' clips of one UNet call: each conditional and unconditional, and edit guidance's contrast rows;
    the rows a ControlNet steers."""
    return 2 * num_targets + (num_targets if options.edit_guidance else 0)


def clips_per_call(inversion: Inversion, num_targets: int, options: SamplerOptions) -> int:
    """The most clips one UNet call of ``sample_edit`` holds: the source (and its unconditional pass where it does not
    replay its path) and ``target_clips_per_call``. What a host asks memory for."""
    source = 1 + int(inversion.mode == "null_text" and not replays_source_trajectory(inversion, options))
    return source + target_clips_per_call(num_targets, options)


def sample_edit(model: VideoModel, inversion: Inversion, plan: EditPlan, options: SamplerOptions = SamplerOptions(),
                host: Host = Host(), structure: Optional[StructureGuidance] = None,
                num_frames: Optional[int] = None, context: Optional[ContextWindows] = None,
                region: Optional[torch.Tensor] = None) -> EditResult:
    """Edit the inverted clip; ``structure`` steers the target branches through a ControlNet; ``context``: the UNet
    sees the clip through these windows (None: all frames at once). Local blend, its mask and the attention maps
    work per frame over the whole clip: each window's maps go to its frames, weighted as its predictions are.
    ``region``: the user's edit region (see ``edit_region``); outside it the targets keep the source's latents."""
    check_edit_inputs(model, inversion, plan)
    guidance, decoupled, temporal_guidance = options.guidance, options.decoupled_guidance, options.temporal_guidance
    edit_guidance = options.edit_guidance
    f = inversion.num_frames
    if num_frames is not None and num_frames != f:
        raise VP2PInputError(f"latents: {num_frames} frames, but the inversion was made from {f}")
    if context is not None:
        context.check_clip(f, steps=inversion.num_steps)
    made = inversion.stats.get("windows")  # None: saved before inversions recorded their windows
    now = windows_signature(context, f, inversion.num_steps, model.frame_attention)
    if made is not None and made != now:
        log.warning("Video-P2P: the inversion was made %s, the sampler runs %s: give the sampler the context windows "
                    "the inversion was made with (its null embeddings and source path were made through them)%s",
                    "through context windows" if made else "on the whole clip at once",
                    "through other context windows" if made and now else
                    "through context windows" if now else "on the whole clip at once",
                    "; the whole clip at once also needs the memory the windows spared" if made and not now else "")
    unet = model.unet
    host.load_module(unet)
    dev = host.device
    dtype = model.weight_dtype  # the embeddings'; latents stay float32 (video_forward casts)
    schedule = DDIMSchedule(inversion.schedule, inversion.num_steps)
    n = plan.num_targets
    T = schedule.num_steps
    eg_start, eg_end = (int(v * T) for v in fraction_pair(options.edit_guidance_steps))
    mode = inversion.mode
    if mode == "null_text" and not inverted_at(inversion, guidance):
        log.warning("Video-P2P: the inversion's null embeddings reproduce the clip at guidance %g, but the sampler's "
                    "is %g: the source branch drifts from the clip, and local blend and self-attention injection "
                    "carry the drift into the edit; sample at %g, or invert at %g", inversion.guidance, guidance,
                    inversion.guidance, guidance)
    trajectory = inversion.trajectory if replays_source_trajectory(inversion, options) else None
    src_needs_uncond = mode == "null_text" and trajectory is None
    src_emb = inversion.source_embedding.to(dev, dtype)
    tgt_emb = plan.target_embeddings.to(dev, dtype)
    empty = plan.empty_embedding.to(dev, dtype)

    def target_uncond(i: int) -> torch.Tensor:
        if mode == "negative_prompt":
            return src_emb.expand(n, -1, -1)  # negative-prompt inversion: the source prompt is the negative
        if decoupled or mode == "fast":
            return empty.expand(n, -1, -1)
        return inversion.uncond_for_step(i).to(dev, dtype).expand(n, -1, -1)

    h, w = inversion.x_T.shape[-2:]
    if region is not None:
        region = edit_region(region, f, (h, w)).to(host.device)
    layers = cross_attention_layers(unet)
    ctrl = AttentionController(plan, T, f, (h, w), blend_layer_names(unet, layers), dev, vae_factor=model.vae_factor)
    state = frame_state(unet)
    evals0 = state.forward_clips
    x_T = inversion.x_T.to(dev, torch.float32)
    x_src = x_T
    x_tgt = x_T.unsqueeze(0).expand(n, *x_T.shape).clone()
    loop = host.loop(T, "editing")
    state.controller = ctrl
    try:
        with torch.no_grad():
            for i, t in enumerate(schedule.timesteps.tolist()):
                contrast = bool(edit_guidance) and eg_start <= i < eg_end
                ctrl.contrast = contrast
                clips = [x_src.unsqueeze(0), x_tgt]
                texts = [src_emb, tgt_emb]
                if contrast:  # the source prompt at the targets' latents
                    clips.append(x_tgt)
                    texts.append(src_emb.expand(n, -1, -1))
                if src_needs_uncond:
                    clips.append(x_src.unsqueeze(0))
                    texts.append(inversion.uncond_for_step(i).to(dev, dtype))
                clips.append(x_tgt)
                texts.append(target_uncond(i))
                x_in = torch.cat(clips)  # [clips, F, C, h, w]
                text = torch.cat(texts)
                n_clips = x_in.shape[0]
                k = ctrl.controlled_clips
                target_rows = list(range(1, k)) + list(range(n_clips - n, n_clips))
                windows = (context.windows(f, step=i, frame_attention=model.frame_attention) if context is not None
                           else whole_clip(f))
                ctrl.set_windows(windows)

                def predict(xw: torch.Tensor, w: Window, weights: torch.Tensor) -> torch.Tensor:
                    """Guided target eps and the source's conditional/unconditional eps of one window."""
                    host.interrupt()  # per window: a long clip's step is many of them
                    fw = len(w)
                    ctrl.enter_window(w, weights)
                    flat = xw.flatten(0, 1)
                    text_w = text.repeat_interleave(fw, dim=0)
                    extra = (structure.unet_kwargs(i, T, flat, t, text_w, target_rows, fw, frame_index=list(w.frames),
                                                   dtype=dtype) if structure else {})
                    out = video_forward(unet, flat, t, text_w, fw, **extra)
                    eps = schedule.to_eps(out, t, flat).view(-1, fw, *x_T.shape[1:])
                    eps_tgt_c, eps_tgt_u = eps[1:1 + n], eps[-n:]
                    eps_tgt = eps_tgt_u + guidance * (eps_tgt_c - eps_tgt_u)
                    if contrast:
                        eps_tgt = eps_tgt + edit_guidance * (eps_tgt_c - eps[1 + n:k])
                    if temporal_guidance != 1.0:
                        eps_img = independent_prediction(model, schedule, xw[-n:], t, target_uncond(i),
                                                         _rows(extra, (n_clips - n) * fw))
                        eps_tgt = eps_tgt + (temporal_guidance - 1.0) * (eps_tgt_u - eps_img)
                    return torch.cat([eps[:1], eps[k:k + int(src_needs_uncond)], eps_tgt])

                fused = fuse(predict, x_in, windows)
                ctrl.leave_windows()
                eps_src_c = fused[0]
                eps_tgt = fused[-n:]
                if trajectory is not None:
                    new_src = trajectory[i].to(dev, torch.float32)
                else:
                    if src_needs_uncond:
                        eps_src_u = fused[1]
                        eps_src = eps_src_u + guidance * (eps_src_c - eps_src_u)
                    else:
                        eps_src = eps_src_c
                    new_src = schedule.prev_step(eps_src, t, x_src)
                new_tgt = schedule.prev_step(eps_tgt, t, x_tgt)
                # the first target's first frame as it would come out now, as KSampler previews (the noisy latent
                # shows noise until the last steps)
                preview = schedule.predicted_x0(eps_tgt[0, :1], t, x_tgt[0, :1])
                both = ctrl.end_step(torch.cat([new_src.unsqueeze(0), new_tgt]))
                x_src, x_tgt = both[0], both[1:]
                if region is not None:
                    x_tgt = x_src + region * (x_tgt - x_src)
                loop.step(i + 1, preview=preview)
    finally:
        state.controller = None
        ctrl.contrast = False
    stats = {"forwards": state.forward_clips - evals0, "source_uncond": src_needs_uncond,
             "reused_source_trajectory": trajectory is not None}
    maps, mask, outline = ctrl.attention_maps(), ctrl.edit_mask(), ctrl.edit_mask_is_blend_region
    if region is not None:  # the exported mask: local blend's within the region, or the region alone; the region
        # as where the sampler edited (a soft region's edge edits in part, and the composite, which reads the mask
        # above 1/2, would hand a feathered region's outer half, or a region of 0.5, back to the source), but for a
        # mask's 8-bit noise (REGION_FLOOR), which would otherwise paste the VAE's round trip over the whole frame
        outline = outline and mask is not None
        support = region.gt(REGION_FLOOR).to(region.dtype)
        mask = support.expand(n, -1, -1, -1, -1) if mask is None else mask * support
    return EditResult(edited=x_tgt.detach().cpu(), source=x_src.detach().cpu(),
                      attention_maps=None if maps is None else maps.cpu(),
                      blend_mask=None if mask is None else mask.cpu(), stats=stats, blend_outline=outline)
