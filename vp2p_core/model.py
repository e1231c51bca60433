"""The video model passed between stages: inflated UNet, schedule, latent scale and fingerprints."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .errors import VP2PInputError
from .files import combine_fingerprints, state_fingerprint
from .inflation import TEMPORAL_PREFIXES, frame_state, inflate_unet
from .options import SD_LATENT_SCALE, SD_VAE_FACTOR, InflationOptions
from .schedule import DDIMConfig


def base_fingerprint(unet) -> str:
    """Fingerprint of the 2D weights (temporal modules left out): names the checkpoint a delta was made for."""
    named = [(n, p) for n, p in unet.named_parameters() if not any(f".{t}" in f".{n}" for t in TEMPORAL_PREFIXES)]
    return state_fingerprint(named)


@dataclass
class VideoModel:
    """An inflated UNet and what the stages need to know about it."""

    unet: torch.nn.Module
    schedule: DDIMConfig = field(default_factory=DDIMConfig)
    latent_scale: float = SD_LATENT_SCALE
    base_fingerprint: str = ""
    delta_fingerprint: str = ""
    frame_attention: str = InflationOptions.frame_attention
    info: dict = field(default_factory=dict)
    vae_factor: int = SD_VAE_FACTOR  # image pixels per latent pixel (the VAE's downsampling)

    @classmethod
    def from_unet(cls, unet, prediction_type: str = "epsilon", latent_scale: float = SD_LATENT_SCALE,
                  frame_attention: str = InflationOptions.frame_attention,
                  schedule: Optional[DDIMConfig] = None, vae_factor: int = SD_VAE_FACTOR,
                  group_norm: str = InflationOptions.group_norm) -> "VideoModel":
        sched = schedule or DDIMConfig(prediction_type=prediction_type)
        fp = base_fingerprint(unet)
        inflate_unet(unet, frame_attention=frame_attention, group_norm=group_norm)
        return cls(unet=unet, schedule=sched, latent_scale=latent_scale, base_fingerprint=fp,
                   frame_attention=frame_attention, vae_factor=int(vae_factor))

    @property
    def group_norm(self) -> str:
        """InflationOptions.group_norm of the inflated UNet (its state holds the one copy)."""
        return self.state.group_norm

    @property
    def fingerprint(self) -> str:
        """Identifies base weights + tuned delta (+ per-frame GroupNorm): inversions are only valid for the same
        fingerprint. Per-frame statistics change every prediction, so they enter it; pooled ones ("clip", the only
        kind before the option) leave it as it was, so an inversion saved then still fits a "clip" model only."""
        return self.fingerprint_with(self.delta_fingerprint)

    def fingerprint_with(self, delta_fingerprint: str) -> str:
        """``fingerprint`` with the tuned delta of that fingerprint ("": untuned)."""
        parts = [self.base_fingerprint] + ([delta_fingerprint] if delta_fingerprint else [])
        if self.group_norm != "clip":
            parts.append(f"group_norm={self.group_norm}")
        return parts[0] if len(parts) == 1 else combine_fingerprints(*parts)

    @property
    def state(self):
        return frame_state(self.unet)

    def evaluations(self) -> int:
        return self.state.forward_clips

    def check_text(self, embedding: torch.Tensor, what: str) -> None:
        """Refuse text embeddings of another width than the UNet's cross-attention reads (another encoder)."""
        want = self.unet.config.cross_attention_dim
        if embedding.shape[-1] != want:
            raise VP2PInputError(f"{what}: text embeddings of width {embedding.shape[-1]}, but the model reads {want}; "
                                 "use the CLIP (text encoder) of the same checkpoint")
