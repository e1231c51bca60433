"""Inflation of a diffusers UNet2DConditionModel into the text-to-set (T2S) model, in place.

What changes (docs/ARCHITECTURE.md, "Reference behaviour reproduced"):
- every ``attn1`` gets a frame-attention processor (frame 0, or frames 0 and i-1, as keys/values);
- every transformer block gets ``norm_temp`` + ``attn_temp`` (the reference's names, so weights map
  one to one) applied after its feed-forward through a forward hook; output projection zeroed;
- GroupNorm in the resnets and ``conv_norm_out`` takes its statistics per frame (``group_norm`` "frame", the
  default) or, as in the reference, over all frames of a clip ("clip").
The pseudo-3D 1x3x3 convolutions of Tune-A-Video are 2D convolutions with frames in the batch, so they
need nothing. Frames are folded into the batch: a clip of F frames is F consecutive batch rows, and the
number of frames is given at call time through ``video_forward``.
"""
from __future__ import annotations

import logging
import math
import zlib
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .attention import CrossAttnProcessor, FrameAttnProcessor, FrameState, TemporalAttnProcessor
from .errors import VP2PInputError
from .options import InflationOptions

log = logging.getLogger(__name__)

TEMPORAL_PREFIXES = ("attn_temp.", "norm_temp.")
TRAINABLE_SUFFIXES = ("attn1.to_q", "attn2.to_q", "attn_temp")


class InflatedGroupNorm(nn.GroupNorm):
    """A ResNet GroupNorm of the video model: statistics per frame (``FrameState.group_norm`` "frame", the image
    model's own; AnimateDiff's InflatedGroupNorm) or over all frames of a clip ("clip": the reference normalises
    the 5-D tensor)."""

    frame_state: Optional[FrameState] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = self.frame_state
        f = 1 if st is None or st.independent or st.group_norm != "clip" else st.num_frames
        if f == 1:
            return super().forward(x)
        bf, c = x.shape[:2]
        x5 = x.view(bf // f, f, *x.shape[1:]).transpose(1, 2)
        y = F.group_norm(x5, self.num_groups, self.weight, self.bias, self.eps)
        return y.transpose(1, 2).reshape(x.shape)


def _temporal_hook(block: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    """Temporal attention after the block's feed-forward: (b f) d c -> (b d) f c, LayerNorm, attend, add."""
    state: FrameState = block.attn_temp.processor.state
    if state.independent:
        return output
    f = state.num_frames
    d = output.shape[1]
    state.extra["pixels"] = d
    x = rearrange(output, "(b f) d c -> (b d) f c", f=f)
    x = block.attn_temp(block.norm_temp(x)) + x
    return rearrange(x, "(b d) f c -> (b f) d c", d=d)


def check_sd_unet(unet) -> None:
    """Refuse models the inflation does not fit, with a message that says why."""
    from diffusers import UNet2DConditionModel

    if not isinstance(unet, UNet2DConditionModel):
        raise VP2PInputError(
            f"unet: expected a diffusers UNet2DConditionModel of a Stable Diffusion 1.x/2.x model, got {type(unet).__name__}")
    cfg = unet.config
    if getattr(cfg, "addition_embed_type", None) or getattr(cfg, "encoder_hid_dim", None):
        raise VP2PInputError(
            "unet: SD-XL-style UNets (added text/time embeddings) are not supported; expected an SD 1.x/2.x UNet")
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    if not blocks or any(getattr(b, "attn2", None) is None for b in blocks):
        raise VP2PInputError("unet: expected transformer blocks with text cross-attention (attn2), as in SD 1.x/2.x")
    if not any(isinstance(m, nn.GroupNorm) for m in unet.modules()):
        raise VP2PInputError("unet: expected GroupNorm layers in the resnet blocks, as in SD 1.x/2.x")


def _seeded_linear_init(linear: nn.Linear, name: str) -> None:
    """torch's default Linear init, but seeded by the layer's name so inflation is deterministic."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    bound = 1.0 / math.sqrt(linear.in_features)
    with torch.no_grad():
        w = torch.empty(linear.weight.shape).uniform_(-bound, bound, generator=g)
        linear.weight.copy_(w)
        if linear.bias is not None:
            linear.bias.copy_(torch.empty(linear.bias.shape).uniform_(-bound, bound, generator=g))


def _make_temporal(block: nn.Module, name: str, state: FrameState) -> None:
    from diffusers.models.attention_processor import Attention

    attn1 = block.attn1
    dim = attn1.to_q.in_features
    heads = attn1.heads
    p = next(block.parameters())
    attn = Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False, out_bias=True,
                     upcast_attention=getattr(attn1, "upcast_attention", False))
    for proj in ("to_q", "to_k", "to_v"):
        _seeded_linear_init(getattr(attn, proj), f"{name}.attn_temp.{proj}")
    nn.init.zeros_(attn.to_out[0].weight)
    nn.init.zeros_(attn.to_out[0].bias)  # the reference zeroes only the weight
    attn.set_processor(TemporalAttnProcessor(state))
    block.attn_temp = attn.to(device=p.device, dtype=p.dtype)
    block.norm_temp = nn.LayerNorm(dim).to(device=p.device, dtype=p.dtype)
    block._vp2p_hook = block.register_forward_hook(_temporal_hook)


def inflate_unet(unet, frame_attention: str = InflationOptions.frame_attention,
                 group_norm: str = InflationOptions.group_norm):
    """Inflate ``unet`` in place into the T2S model and return it. Idempotent (a second call sets
    ``frame_attention`` and ``group_norm``)."""
    # the options' own checks (a VP2PInputError naming frame_attention or group_norm) before anything changes
    InflationOptions(frame_attention=frame_attention, group_norm=group_norm)
    if is_inflated(unet):
        set_frame_attention(unet, frame_attention)
        frame_state(unet).group_norm = group_norm
        return unet
    check_sd_unet(unet)
    state = FrameState(group_norm=group_norm)
    unet.vp2p_state = state
    unet.vp2p_frame_attention = frame_attention
    for name, module in list(unet.named_modules()):
        if type(module).__name__ == "BasicTransformerBlock":
            module.attn1.set_processor(FrameAttnProcessor(state, frame_attention))
            module.attn2.set_processor(CrossAttnProcessor(state, f"{name}.attn2"))
            _make_temporal(module, name, state)
    norms = [(n, m) for n, m in unet.named_modules()
             if isinstance(m, nn.GroupNorm) and (".resnets." in n or n == "conv_norm_out")]
    for _, m in norms:
        m.__class__ = InflatedGroupNorm
        m.frame_state = state
    log.info("inflated UNet: %d transformer blocks, %d GroupNorms (statistics per %s), frame attention %r",
             len(cross_attention_layers(unet)), len(norms), group_norm, frame_attention)
    return unet


def is_inflated(unet) -> bool:
    return isinstance(getattr(unet, "vp2p_state", None), FrameState)


def frame_state(unet) -> FrameState:
    if not is_inflated(unet):
        raise VP2PInputError("model: expected an inflated UNet (run InflateUNet / inflate_unet first)")
    return unet.vp2p_state


def set_gradient_checkpointing(unet, on: bool) -> None:
    """diffusers' gradient checkpointing on or off (it acts wherever gradients are enabled, in eval mode too)."""
    if on != bool(unet.is_gradient_checkpointing):
        if on:
            unet.enable_gradient_checkpointing()
        else:
            unet.disable_gradient_checkpointing()


def set_frame_attention(unet, mode: str) -> None:
    state = frame_state(unet)
    for m in unet.modules():
        if type(m).__name__ == "BasicTransformerBlock":
            m.attn1.set_processor(FrameAttnProcessor(state, mode))
    unet.vp2p_frame_attention = mode


def cross_attention_layers(unet) -> list[str]:
    """Names of the cross-attention layers in call order (down, mid, up)."""
    return [m.processor.name for m in unet.modules()
            if hasattr(m, "processor") and isinstance(m.processor, CrossAttnProcessor)]


def trainable_parameter_names(unet) -> list[str]:
    """The reference's trainable set: attn1.to_q, attn2.to_q and all of attn_temp (norm_temp frozen)."""
    names = []
    for mname, module in unet.named_modules():
        if mname.endswith(TRAINABLE_SUFFIXES):
            names += [f"{mname}.{p}" for p, _ in module.named_parameters()]
    return names


def video_forward(unet, sample: torch.Tensor, timestep, text: torch.Tensor, num_frames: int,
                  independent: bool = False, **unet_kwargs) -> torch.Tensor:
    """One UNet call on clips folded into the batch: sample [(B*F), C, h, w], text [B or B*F, L, D].

    The UNet computes in its weights' dtype and its prediction comes back in the sample's: the DDIM loops keep
    their latents in float32 whatever the weights are: on a small-world clip, fast inversion and edit with bf16
    weights came 2.6% from the float32 run's edited latents (x_T 5.2%), against 6.8% (12.1%) with the latents
    rounded to bf16 every step. At float32 every cast is a no-op."""
    state = frame_state(unet)
    if num_frames < 1 or sample.shape[0] % num_frames:
        raise VP2PInputError(
            f"latents: batch of {sample.shape[0]} frames is not a whole number of clips of {num_frames} frames")
    clips = sample.shape[0] // num_frames
    if text.shape[0] == clips and num_frames > 1:
        text = text.repeat_interleave(num_frames, dim=0)
    elif text.shape[0] != sample.shape[0]:
        raise VP2PInputError(f"text embeddings: expected {clips} or {sample.shape[0]} rows, got {text.shape[0]}")
    state.num_frames = num_frames
    state.independent = independent
    state.forward_clips += clips
    dtype = next(unet.parameters()).dtype
    try:
        out = unet(sample.to(dtype), timestep, encoder_hidden_states=text.to(dtype), return_dict=False,
                   **{k: _in_dtype(v, dtype) for k, v in unet_kwargs.items()})[0]
        return out.to(sample.dtype)
    finally:
        state.independent = False


def _in_dtype(value, dtype: torch.dtype):
    """A UNet keyword argument in the weights' dtype: floating tensors, alone or in a list (ControlNet residuals)."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_in_dtype(v, dtype) for v in value)
    return value
