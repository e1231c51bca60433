"""The objects that travel on our node sockets (VP2P_MODEL, VP2P_EDIT, VP2P_MAPS, VP2P_STRUCTURE).

VP2P_INVERSION is ``vp2p_core.Inversion`` as it is. None of these imports ComfyUI.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch

from vp2p_core import Delta, EditPlan, StructureGuidance, VideoModel, VP2PInputError
from vp2p_core.files import combine_fingerprints

VP2P_MODEL = "VP2P_MODEL"
VP2P_INVERSION = "VP2P_INVERSION"
VP2P_EDIT = "VP2P_EDIT"
VP2P_MAPS = "VP2P_MAPS"
VP2P_STRUCTURE = "VP2P_STRUCTURE"


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
        """Base + delta: the fingerprint an inversion made with this model records."""
        if self.delta is None:
            return self.video.base_fingerprint
        return combine_fingerprints(self.video.base_fingerprint, self.delta.fingerprint)

    @property
    def latent_scale(self) -> float:
        return float(self.video.latent_scale)

    @property
    def tuned_frames(self) -> Optional[int]:
        return None if self.delta is None else self.delta.num_frames

    def check_delta_fits(self, delta: Delta, what: str) -> None:
        """Refuse a delta made for another checkpoint, or whose tensors the model lacks."""
        if delta.base_fingerprint != self.video.base_fingerprint:
            raise VP2PInputError(
                f"{what}: made for the model with fingerprint {delta.base_fingerprint}, but this model is "
                f"{self.video.base_fingerprint} (another checkpoint or LoRA); load the checkpoint it was tuned "
                "on, or tune again")
        params = dict(self.video.unet.named_parameters())
        for name, t in delta.tensors.items():
            if name not in params:
                raise VP2PInputError(f"{what}: the parameter {name!r} is not in this model")
            if tuple(params[name].shape) != tuple(t.shape):
                raise VP2PInputError(
                    f"{what}: {name} has shape {tuple(t.shape)}, this model's is {tuple(params[name].shape)}")


def vp2p_model_from_unet(unet, prediction_type: str = "epsilon", latent_scale: float = 0.18215,
                         frame_attention: str = "first", patcher: Any = None, latent_format: Any = None,
                         info: Optional[dict] = None) -> VP2PModel:
    """Inflate a diffusers UNet2DConditionModel (in place) into a VP2P_MODEL."""
    with torch.inference_mode(False):
        video = VideoModel.from_unet(unet, prediction_type, latent_scale, frame_attention)
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
    blend_mask: Optional[torch.Tensor] = None  # [n, F, 1, h, w] the last LocalBlend mask (latent size)


@dataclass(eq=False)
class VP2PStructure:
    """Gen-1 structure guidance before it meets the clip: a ControlNet, the structure clip and the settings.

    The sampler turns it into ``vp2p_core.StructureGuidance`` with the inversion's latent size and frame count,
    so a structure clip of another length or size is refused there, naming ``structure``.
    """

    control: Any  # nodes.controlnet.ControlNetHandle
    images: torch.Tensor  # IMAGE [F,H,W,C] 0..1, as given (blurred when the guidance is built)
    blur: float = 0.0
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def guidance(self, latent_hw: tuple[int, int], frames: int) -> StructureGuidance:
        return StructureGuidance.from_images(self.control.residual_fn, self.images, tuple(latent_hw), int(frames),
                                             blur=self.blur, strength=self.strength, start=self.start, end=self.end,
                                             vae_factor=self.control.compression)
