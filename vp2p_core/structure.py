"""Gen-1's structure guidance: a per-frame structure clip (depth, edges, masks) through a ControlNet.

The structure maps are blurred by a fidelity level t_s (Gen-1's knob): 0 keeps the source's shape
exactly, larger levels keep only its coarse layout. ``t_s`` is a Gaussian sigma in pixels of a 64-pixel
wide copy of the map (so a level means the same at any resolution). The ControlNet acts on the target
branches only (their conditional and unconditional rows, as ComfyUI's Apply ControlNet does); the
source branch keeps reproducing the inversion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .errors import VP2PInputError
from .options import StructureOptions

# (sample [N,C,h,w], timestep, text [N,L,D], cond images [N,3,H,W]) -> (down residuals, mid residual)
ResidualFn = Callable[[torch.Tensor, object, torch.Tensor, torch.Tensor], tuple[Sequence[torch.Tensor], torch.Tensor]]


def fit_to_size(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """maps [F,C,H,W] cut to ``size``'s aspect about their middle and scaled to it (bilinear, antialiased when
    shrinking): what ComfyUI's ControlNet does to a hint of another size (its own resize is nearest-exact; a depth
    map keeps its gradients better bilinear)."""
    H, W = maps.shape[-2:]
    h, w = size
    if H * w > W * h:  # taller than the target's aspect: rows off the top and bottom
        keep = max(1, round(W * h / w))
        maps = maps[..., (H - keep) // 2:(H - keep) // 2 + keep, :]
    elif H * w < W * h:
        keep = max(1, round(H * w / h))
        maps = maps[..., (W - keep) // 2:(W - keep) // 2 + keep]
    shrink = maps.shape[-2] > h or maps.shape[-1] > w
    return torch.nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def blur_structure(maps: torch.Tensor, level: float) -> torch.Tensor:
    """maps [F,C,H,W] in 0..1 blurred at fidelity level ``level`` (0: unchanged)."""
    level = StructureOptions.setting("structure_blur").check(level)
    if level == 0 or min(maps.shape[-2:]) < 2:  # a 1-pixel map has nothing to blur (and no odd kernel fits)
        return maps
    import kornia.filters as kf

    sigma = float(level) * maps.shape[-1] / 64.0
    k = 2 * math.ceil(3 * sigma) + 1
    k = min(k, 2 * (min(maps.shape[-2:]) // 2) - 1) if k >= min(maps.shape[-2:]) else k
    return kf.gaussian_blur2d(maps.float(), (k, k), (sigma, sigma), border_type="replicate").to(maps.dtype)


def check_structure_images(images, what: str = "structure") -> None:
    """A structure clip is an IMAGE: [frames, H, W, 1 or 3] in 0..1."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise VP2PInputError(f"{what}: expected an IMAGE [frames, H, W, 1 or 3], got {shape}")


def diffusers_controlnet(controlnet) -> ResidualFn:
    """Adapter for a diffusers ControlNetModel, in its own precision: the inputs are cast to its dtype and the
    residuals back to the sample's, which ``StructureGuidance.unet_kwargs`` gives in the UNet's dtype (an fp32
    ControlNet beside an fp16 UNet, or the other way round)."""

    def run(sample, timestep, text, cond):
        dtype = next(controlnet.parameters()).dtype
        down, mid = controlnet(sample.to(dtype), timestep, encoder_hidden_states=text.to(dtype),
                               controlnet_cond=cond.to(sample.device, dtype), return_dict=False)
        return [r.to(sample.dtype) for r in down], mid.to(sample.dtype)

    return run


@dataclass
class StructureGuidance:
    """ControlNet residuals for the rows that follow the structure clip."""

    residual_fn: ResidualFn
    structure: torch.Tensor  # [F,3,H,W] in 0..1, already blurred
    strength: float
    start: float
    end: float
    # the whole clip's maps on the device, kept from step to step (16 frames at 512 px are 50 MB in float32, copied
    # every step before); a context window's frames are copied per call, so a long clip is never on the device whole
    _on_device: Optional[torch.Tensor] = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_images(cls, residual_fn: ResidualFn, images: torch.Tensor, latent_hw: tuple[int, int], frames: int,
                    options: StructureOptions = StructureOptions(),
                    vae_factor: Optional[int] = None) -> "StructureGuidance":
        """images: IMAGE [F,H,W,C] (C 1 or 3) in 0..1. Checks frame count and size against the latents."""
        check_structure_images(images)
        if images.shape[0] == 1 and frames > 1:  # one map for every frame, as ComfyUI's Apply ControlNet takes it
            images = images.expand(frames, -1, -1, -1)
        if images.shape[0] != frames:
            raise VP2PInputError(f"structure: {images.shape[0]} frames, but the clip has {frames}")
        h, w = latent_hw
        H, W = images.shape[1:3]
        maps = images.permute(0, 3, 1, 2).float()
        if vae_factor is not None and (H, W) != (h * vae_factor, w * vae_factor):
            # a depth or edge preprocessor's own size: fitted as ComfyUI's ControlNet fits a hint (the middle of the
            # clip's aspect, scaled); it was refused
            maps = fit_to_size(maps, (h * vae_factor, w * vae_factor))
        elif vae_factor is None and (H * w != W * h or H % h):
            raise VP2PInputError(f"structure: frames of {H}x{W} do not fit latents of {h}x{w} (expected a multiple "
                                 f"of {h}x{w})")
        if maps.shape[1] == 1:
            maps = maps.expand(-1, 3, -1, -1)
        return cls(residual_fn=residual_fn, structure=blur_structure(maps, options.structure_blur),
                   strength=options.strength, start=options.start_percent, end=options.end_percent)

    def active(self, step: int, num_steps: int) -> bool:
        return self.strength != 0 and self.start <= step / num_steps < self.end

    def unet_kwargs(self, step: int, num_steps: int, x: torch.Tensor, timestep, text: torch.Tensor,
                    rows: Sequence[int], frames: int, frame_index: Optional[Sequence[int]] = None,
                    dtype: Optional[torch.dtype] = None) -> dict:
        """Residuals for the whole batch x [(clips*F),C,h,w]; clips not in ``rows`` get zeros. ``frame_index``:
        the clip frames of the batch's F rows (a context window), default all frames in order. ``dtype``: the
        UNet's (default x's): the residuals are as large as its activations, so they are made in its precision,
        not in the float32 of the latents."""
        if not rows or not self.active(step, num_steps):
            return {}
        dtype = dtype or x.dtype
        idx = torch.tensor([c * frames + j for c in rows for j in range(frames)], device=x.device)
        if frame_index is None or list(frame_index) == list(range(self.structure.shape[0])):  # the whole clip
            on = self._on_device
            if on is None or on.device != x.device or on.dtype != dtype:
                self._on_device = on = self.structure.to(x.device, dtype)
            maps = on
        else:
            maps = self.structure[list(frame_index)].to(x.device, dtype)
        cond = maps.repeat(len(rows), 1, 1, 1)
        down, mid = self.residual_fn(x[idx].to(dtype), timestep, text[idx].to(dtype), cond)

        def scatter(r):
            full = torch.zeros((x.shape[0], *r.shape[1:]), device=r.device, dtype=r.dtype)
            full[idx] = r * self.strength
            return full

        return {"down_block_additional_residuals": tuple(scatter(r) for r in down),
                "mid_block_additional_residual": scatter(mid)}
