"""The objects that travel on our node sockets (VP2P_MODEL, VP2P_EDIT, VP2P_MAPS, VP2P_STRUCTURE, VP2P_LIGHT).

VP2P_INVERSION is ``vp2p_core.Inversion`` and VP2P_CONTEXT ``vp2p_core.context.ContextWindows`` as they are.
None of these imports ComfyUI.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch

from vp2p_core import (SD_LATENT_SCALE, SD_VAE_FACTOR, Delta, EditPlan, InflationOptions, StructureGuidance,
                       StructureOptions, VideoModel, VP2PInputError)
from vp2p_core.context import CORE_SCHEDULES
from vp2p_core.options import ContextOptions
from vp2p_core.schedule import DDIMConfig
from vp2p_core.tuning import check_delta

log = logging.getLogger(__name__)

VP2P_MODEL = "VP2P_MODEL"
VP2P_INVERSION = "VP2P_INVERSION"
VP2P_EDIT = "VP2P_EDIT"
VP2P_MAPS = "VP2P_MAPS"
VP2P_STRUCTURE = "VP2P_STRUCTURE"
VP2P_CONTEXT = "VP2P_CONTEXT"
VP2P_LIGHT = "VP2P_LIGHT"


def check_context(context) -> None:
    """The optional ``context`` input is VideoP2PContextWindows' output or nothing."""
    from vp2p_core.context import ContextWindows

    if context is not None and not isinstance(context, ContextWindows):
        raise VP2PInputError(f"context: expected the output of VideoP2PContextWindows, got {type(context).__name__}")


def context_key(context, frame_attention: str = InflationOptions.frame_attention,
                num_frames: Optional[int] = None, fuse_weights: bool = True) -> dict:
    """The context windows' part of a stage's cache key (nothing without windows, so old keys stay valid; nothing
    either where the clip, ``num_frames`` long, fits one window: every stage then sees the whole clip, bit for bit
    as without the node, and plugging it in on a short clip no longer recomputes a cached tuning). ComfyUI's
    schedules (uniform, looped) and Tune-A-Video's frame attention are marked by the revision of how the stages
    meet them: DDIM inversion asks each timestep for its denoising step's windows, a looped window keeps one copy of
    frame 0, and first_prev windows hold their first frame's previous frame (2); relative weights on ComfyUI's
    schedules go by the row's place in the window (3: a looped window past the clip's end weighed about 2); a looped
    window's second copy of frame 0 reads frame 0 as its previous frame with first_prev (4: it read the frame before
    it in the window). ``fuse_weights`` False: for a stage that reads only which of a window's rows weigh anything,
    not how much (tuning), the fuse method is left out (changing the sampler's blending re-ran a 500-step tuning)."""
    if context is None or (num_frames is not None and num_frames <= context.options.context_length):
        return {}
    o = context.options
    if not fuse_weights:  # a stage that reads only which rows weigh (tuning): the fuse method changes nothing
        o = o.replace(fuse_method=ContextOptions.fuse_method)
    key = {"context": o.cache_key()}
    if o.context_schedule == "looped_uniform" and frame_attention == "first_prev":
        key["windows_revision"] = 4
    elif o.context_schedule not in CORE_SCHEDULES and o.fuse_method == "relative":
        key["windows_revision"] = 3
    elif o.context_schedule not in CORE_SCHEDULES or frame_attention != "first":
        key["windows_revision"] = 2
    return key


def schedule_key(vp2p_model: "VP2PModel") -> dict:
    """The noise schedule's part of a stage's cache key: the fingerprint is the weights', which ComfyUI's
    ModelSamplingDiscrete can make a v-prediction model (nothing for SD's own eps schedule: old keys stay valid)."""
    schedule = vp2p_model.video.schedule
    return {} if schedule == DDIMConfig() else {"schedule": schedule.to_dict()}


@dataclass(eq=False)
class VP2PModel:
    """An inflated UNet shared by every node that uses it, plus an optional tuned delta.

    The base UNet is never left changed: a node that needs the tuned weights applies ``delta`` with
    ``vp2p_core.trained_weights`` for the duration of its work. A tuned VP2P_MODEL is a new object with the
    same base and a delta, so the untuned one (and the MODEL it came from) keep working as before.
    """

    video: VideoModel
    patcher: Any = None  # comfy.model_patcher.ModelPatcher around the diffusers UNet, None outside ComfyUI
    delta: Optional[Delta] = None
    latent_format: Any = None  # ComfyUI latent format of the checkpoint, for live previews
    info: dict = field(default_factory=dict)

    def tuned(self, delta: Delta) -> "VP2PModel":
        return replace(self, delta=delta)

    @property
    def fingerprint(self) -> str:
        """Base + delta (+ per-frame GroupNorm, + frame attention): the fingerprint an inversion made with this
        model records."""
        return self.fingerprints[0]

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """``fingerprint``, then the same for the weights held in half precision (``VideoModel.fingerprints``)."""
        return self.video.fingerprints_with("" if self.delta is None else self.delta.fingerprint)

    @property
    def latent_scale(self) -> float:
        return float(self.video.latent_scale)

    @property
    def tuned_frames(self) -> Optional[int]:
        return None if self.delta is None else self.delta.num_frames

    def check_delta_fits(self, delta: Delta, what: str, num_frames: Optional[int] = None,
                         latents: Optional[torch.Tensor] = None) -> None:
        """Refuse a delta made for another checkpoint, prediction type, clip length or (given the clip's scaled
        ``latents``) clip, or whose tensors the model lacks."""
        check_delta(self.video, delta, what, num_frames=num_frames, latents=latents)

    def check_frames(self, frames: int, what: str) -> None:
        """Refuse a clip of another length than the one this model was tuned on."""
        if self.delta is not None:
            self.check_delta_fits(self.delta, what, num_frames=frames)

    def check_clip(self, latents: torch.Tensor, what: str) -> None:
        """Refuse a clip (scaled latents [F,C,h,w]) other than the one this model was tuned on."""
        if self.delta is not None:
            self.check_delta_fits(self.delta, what, latents=latents)

    def latents(self, latent, what: str = "latent", uses_noise_mask: bool = False) -> torch.Tensor:
        """ComfyUI LATENT (unscaled VAE output) -> the scaled [F, C, h, w] float32 latents the core works on.

        A LATENT's ``noise_mask`` (SetLatentNoiseMask) is the edit region, which only Video-P2P Sampler reads
        (``uses_noise_mask``); elsewhere it is ignored, with a warning that says where it takes effect."""
        if not isinstance(latent, dict) or "samples" not in latent:
            raise VP2PInputError(f"{what}: expected a LATENT (from VAEEncode), got {type(latent).__name__}")
        s = latent["samples"]
        if not isinstance(s, torch.Tensor) or s.dim() != 4:
            shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise VP2PInputError(f"{what}: expected image latents [frames, channels, h, w], got {shape}; "
                                 "encode the frames with an SD 1.x/2.x VAE (VAEEncode)")
        if s.shape[0] == 0 or 0 in s.shape[-2:]:
            raise VP2PInputError(f"{what}: expected at least one frame of latents, got shape {tuple(s.shape)}")
        cfg = self.video.unet.config
        if s.shape[1] != cfg.in_channels:
            raise VP2PInputError(f"{what}: {s.shape[1]} latent channels, the model takes {cfg.in_channels}")
        if latent.get("noise_mask") is not None and not uses_noise_mask:
            log.warning("%s: its noise_mask is ignored here; only Video-P2P Sampler's latent input uses one (there "
                        "it confines the edit)", what)
        return s.detach().to("cpu", torch.float32) * self.latent_scale

    def comfy_latent(self, latents: torch.Tensor) -> dict:
        """Scaled core latents -> a ComfyUI LATENT (what VAEDecode and DecodeFrames take)."""
        return {"samples": (latents / self.latent_scale).float()}


def vp2p_model_from_unet(unet, prediction_type: str = "epsilon", latent_scale: float = SD_LATENT_SCALE,
                         frame_attention: str = InflationOptions.frame_attention, patcher: Any = None,
                         latent_format: Any = None, info: Optional[dict] = None,
                         group_norm: str = InflationOptions.group_norm,
                         fingerprints: Optional[tuple[str, tuple[str, ...]]] = None) -> VP2PModel:
    """Inflate a diffusers UNet2DConditionModel (in place) into a VP2P_MODEL (``fingerprints``: see
    ``VideoModel.from_unet``)."""
    with torch.inference_mode(False):
        # ComfyUI's SD 1.x/2.x VAE downsamples by 8 (the local blend's dilation is in pixels of the image)
        video = VideoModel.from_unet(unet, prediction_type=prediction_type, latent_scale=latent_scale,
                                     frame_attention=frame_attention, vae_factor=SD_VAE_FACTOR, group_norm=group_norm,
                                     fingerprints=fingerprints)
    return VP2PModel(video=video, patcher=patcher, latent_format=latent_format, info=dict(info or {}))


@dataclass(eq=False)
class VP2PEdit:
    """A resolved edit (prompts, token maps, embeddings) and the token labels for attention-map display."""

    plan: EditPlan
    token_labels: list[list[str]]  # per prompt (source first), one label per token including BOS/EOS

    @property
    def prompts(self) -> list[str]:
        return [self.plan.source_prompt] + list(self.plan.target_prompts)


@dataclass(eq=False)
class VP2PMaps:
    """Cross-attention maps of one edit, averaged over steps and the LocalBlend layers."""

    maps: Optional[torch.Tensor]  # [1+n, F, hb, wb, 77]
    prompts: list[str]
    token_labels: list[list[str]]
    blend_mask: Optional[torch.Tensor] = None  # [n, F, 1, h, w] where the edit is (EditResult.blend_mask), latent size
    blend_outline: bool = False  # EditResult.blend_outline: the mask is the region the sampler blended in
    # (targets, frames, latent h, latent w) of the edit: the size of an all-edited mask where there is no blend mask
    edit_shape: Optional[tuple[int, int, int, int]] = None


@dataclass(eq=False)
class VP2PStructure:
    """Gen-1 structure guidance before it meets the clip: a ControlNet, the structure clip and the settings.

    The sampler turns it into ``vp2p_core.StructureGuidance`` with the inversion's latent size and frame count: a
    structure clip of another size is fitted there, one of another length (but one frame) refused naming ``structure``.
    """

    control: Any  # nodes.controlnet.ControlNetHandle
    images: torch.Tensor  # IMAGE [F,H,W,C] 0..1, as given (blurred when the guidance is built)
    options: StructureOptions = StructureOptions()

    def guidance(self, latent_hw: tuple[int, int], frames: int) -> StructureGuidance:
        return StructureGuidance.from_images(self.control.residual_fn, self.images, tuple(latent_hw), int(frames),
                                             options=self.options, vae_factor=self.control.compression)


@dataclass(eq=False)
class VP2PLight:
    """The clip's light, taken out of its frames by Normalise Light: an RGB gain per frame [F, 3]
    (``vp2p_core.estimate_light``), for Decode Frames to put back; ``frame_size`` (height, width) of the frames it
    was measured on, so that a light of another clip's size is refused (None: unknown)."""

    gains: torch.Tensor
    frame_size: Optional[tuple[int, int]] = None


def check_light(light) -> None:
    """The optional ``light`` input is Normalise Light's output or nothing."""
    if light is not None and not isinstance(light, VP2PLight):
        raise VP2PInputError(f"light: expected the light output of NormaliseLight, got {type(light).__name__}")
