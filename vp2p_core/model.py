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


# The roundings float32 weights go through when a model tuned and inverted in float32 is edited in half precision
# (InflationOptions.weight_dtype): to fp16, to bf16, and to bf16 by way of fp16.
PRECISION_ROUNDINGS = ((torch.float16,), (torch.bfloat16,), (torch.float16, torch.bfloat16))


def _image_weights(unet) -> list:
    return [(n, p) for n, p in unet.named_parameters() if not any(f".{t}" in f".{n}" for t in TEMPORAL_PREFIXES)]


def check_text_to_image_unet(config, latent_channels: int, what: str = "model") -> None:
    """Refuse UNets this method cannot drive: latent channels other than the VAE's in or out (inpainting: 9 in,
    depth-to-image: 5), or class / added embeddings (unCLIP, SD-XL), which the inflated UNet would be called
    without. config: a diffusers UNet2DConditionModel config (mapping or object)."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    channels = (int(get("in_channels", 4)), int(get("out_channels", 4)))
    if channels != (int(latent_channels), int(latent_channels)):
        raise VP2PInputError(f"{what}: a UNet with {channels[0]} input and {channels[1]} output channels over a VAE "
                             f"of {latent_channels} latent channels (an inpainting or depth-to-image model?); "
                             "expected an SD 1.x/2.x text-to-image UNet")
    extra = [k for k in ("class_embed_type", "num_class_embeds", "addition_embed_type") if get(k) is not None]
    if extra:
        raise VP2PInputError(f"{what}: a class-conditioned UNet ({', '.join(extra)}: unCLIP, SD-XL) is not "
                             "supported; expected an SD 1.x/2.x text-to-image UNet")


def base_fingerprint(unet) -> str:
    """Fingerprint of the 2D weights (temporal modules left out): names the checkpoint a delta was made for."""
    return state_fingerprint(_image_weights(unet))


def precision_aliases(unet) -> tuple[str, ...]:
    """The base fingerprints float32 weights get when a model holds them in half precision (PRECISION_ROUNDINGS;
    none for weights already in half precision): a delta or inversion made in float32 then fits the same checkpoint
    loaded in half precision for editing, and one made in half precision fits it in float32. A hash cannot be made
    blind to the precision itself (rounding to bf16 and rounding fp16 values to bf16 differ on about one value in
    sixteen)."""
    named = _image_weights(unet)
    if not named or named[0][1].dtype != torch.float32:
        return ()
    # fp16, bf16, and bf16 made from the fp16 weights a GPU ComfyUI holds (bf16 of fp16 differs from bf16 of fp32)
    return tuple(state_fingerprint(named, rounding=rounding) for rounding in PRECISION_ROUNDINGS)


def patched_base_fingerprints(unpatched: list[tuple[str, torch.Tensor]], patches: str,
                              dtype: torch.dtype) -> tuple[str, tuple[str, ...]]:
    """(base fingerprint, precision aliases) of weights given as the weights before a host's weight patches (a LoRA)
    and a digest of the patches, held in ``dtype``: what they are made of, not the patched values, which the device
    that applied the patches rounds its own way (a GPU's float32 against a CPU's, then rounded to half precision), so
    that a delta or inversion made with a LoRA on one machine fits the same checkpoint and LoRA on another."""
    def fingerprint(rounding) -> str:
        return combine_fingerprints("weight patches", state_fingerprint(unpatched, rounding=rounding), patches)

    aliases = tuple(fingerprint((dtype,) + r) for r in PRECISION_ROUNDINGS) if dtype == torch.float32 else ()
    return fingerprint((dtype,)), aliases


@dataclass
class VideoModel:
    """An inflated UNet and what the stages need to know about it."""

    unet: torch.nn.Module
    schedule: DDIMConfig = field(default_factory=DDIMConfig)
    latent_scale: float = SD_LATENT_SCALE
    base_fingerprint: str = ""
    base_aliases: tuple[str, ...] = ()  # precision_aliases: the same weights held in half precision
    delta_fingerprint: str = ""
    info: dict = field(default_factory=dict)
    vae_factor: int = SD_VAE_FACTOR  # image pixels per latent pixel (the VAE's downsampling)

    @classmethod
    def from_unet(cls, unet, prediction_type: str = "epsilon", latent_scale: float = SD_LATENT_SCALE,
                  frame_attention: str = InflationOptions.frame_attention,
                  schedule: Optional[DDIMConfig] = None, vae_factor: int = SD_VAE_FACTOR,
                  group_norm: str = InflationOptions.group_norm,
                  fingerprints: Optional[tuple[str, tuple[str, ...]]] = None) -> "VideoModel":
        """``fingerprints``: (base fingerprint, precision aliases) where the weights' own would not name them
        (``patched_base_fingerprints``)."""
        sched = schedule or DDIMConfig(prediction_type=prediction_type)
        fp, aliases = fingerprints or (base_fingerprint(unet), precision_aliases(unet))
        inflate_unet(unet, frame_attention=frame_attention, group_norm=group_norm)
        return cls(unet=unet, schedule=sched, latent_scale=latent_scale, base_fingerprint=fp, base_aliases=aliases,
                   vae_factor=int(vae_factor))

    @property
    def group_norm(self) -> str:
        """InflationOptions.group_norm of the inflated UNet (its state holds the one copy)."""
        return self.state.group_norm

    @property
    def frame_attention(self) -> str:
        """InflationOptions.frame_attention of the inflated UNet (``set_frame_attention`` keeps the one copy)."""
        return self.unet.vp2p_frame_attention

    @property
    def fingerprint(self) -> str:
        """Identifies base weights + tuned delta (+ per-frame GroupNorm, + frame attention other than "first"):
        inversions are only valid for the same fingerprint. Both settings change every prediction, so they enter
        it; the values they had before they entered ("clip", "first") leave it as it was, so an inversion saved
        then with those values still fits. One saved with frame attention "first_prev" before it entered recorded
        the plain fingerprint: a "first_prev" model refuses it (invert again), a "first" model would take it."""
        return self.fingerprint_with(self.delta_fingerprint)

    def fingerprint_with(self, delta_fingerprint: str, base: Optional[str] = None) -> str:
        """``fingerprint`` with the tuned delta of that fingerprint ("": untuned) (and another base fingerprint:
        one of ``base_aliases``)."""
        parts = [base or self.base_fingerprint] + ([delta_fingerprint] if delta_fingerprint else [])
        if self.group_norm != "clip":
            parts.append(f"group_norm={self.group_norm}")
        if self.frame_attention != "first":
            parts.append(f"frame_attention={self.frame_attention}")
        return parts[0] if len(parts) == 1 else combine_fingerprints(*parts)

    def fingerprints_with(self, delta_fingerprint: str) -> tuple[str, ...]:
        """``fingerprint_with`` and the same for each of ``base_aliases``: what an inversion made with this model
        records, and what one made with the same model in another precision may have recorded."""
        return (self.fingerprint_with(delta_fingerprint),) + tuple(
            self.fingerprint_with(delta_fingerprint, base=alias) for alias in self.base_aliases)

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return self.fingerprints_with(self.delta_fingerprint)

    @property
    def weight_dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def check_float32(self, what: str, needs: str) -> None:
        """Refuse half-precision weights for a stage that optimises with them (Adam's steps underflow to NaN in
        fp16 and mostly round away in bf16); ``what`` names the input, ``needs`` the stage and what to do."""
        if self.weight_dtype != torch.float32:
            raise VP2PInputError(f"{what}: its weights are {str(self.weight_dtype).replace('torch.', '')}; {needs}")

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
