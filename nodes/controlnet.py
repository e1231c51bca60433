"""ControlNets for Gen-1's structure guidance, as the core's ``ResidualFn`` (diffusers' residual order).

Two sources:
- ComfyUI's CONTROL_NET (core ControlNetLoader): its SD 1.x/2.x control model (``comfy.cldm.cldm.ControlNet``)
  is called directly. It returns ``{"output": [one residual per input block], "middle": [one]}``; ComfyUI's UNet
  pops ``output`` from the end against the skip connections it pops from the end, so ``output[i]`` belongs to
  input block i, which is exactly diffusers' ``down_block_additional_residuals[i]`` (12 for SD1.5), and
  ``middle[0]`` is ``mid_block_additional_residual``. The hint is the 0..1 image as ComfyUI passes it (after the
  ControlNet's own ``preprocess_image``); the sample is the DDPM x_t the core already works on (ComfyUI's
  ``calculate_input`` turns its sigma-space input into that); the timestep is the DDPM step as a float tensor;
  computation runs in the ControlNet's own dtype (``manual_cast_dtype`` when ComfyUI set one).
- A diffusers ControlNetModel folder under ComfyUI's ``models/controlnet``, loaded offline
  (``local_files_only``, safetensors only).

Both are loaded onto the device by ComfyUI's model management together with the video model (see host.py).
Only ``comfy_*`` functions import ComfyUI, inside.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional, Sequence

import torch

from vp2p_core import VP2PInputError, diffusers_controlnet

_DIRS: list[Path] = []


@dataclass(eq=False)
class ControlNetHandle:
    """A loaded ControlNet: the residual function, what it expects, and what the host must load."""

    residual_fn: Callable
    compression: int  # structure-image pixels per latent pixel
    module: torch.nn.Module  # the weights to put on the compute device
    name: str
    down_channels: list[int]  # channels of each down residual, diffusers order
    mid_channels: int
    context_dim: Optional[int]
    in_channels: int
    patcher: Any = None  # ComfyUI ModelPatcher; None outside ComfyUI

    def check_fits(self, unet, what: str = "structure") -> None:
        """Refuse a ControlNet whose residuals do not fit the video model's UNet, with a message that says why."""
        cfg = unet.config
        if self.context_dim is not None and self.context_dim != cfg.cross_attention_dim:
            raise VP2PInputError(
                f"{what}: the ControlNet {self.name} reads text embeddings of width {self.context_dim}, but the model "
                f"reads {cfg.cross_attention_dim}; use a ControlNet made for this model's SD version (SD1.x: 768, "
                "SD2.x: 1024)")
        if self.in_channels != cfg.in_channels:
            raise VP2PInputError(f"{what}: the ControlNet {self.name} takes {self.in_channels} latent channels, the "
                                 f"model {cfg.in_channels}")
        down, mid = unet_residual_channels(unet)
        if list(self.down_channels) != down or self.mid_channels != mid:
            raise VP2PInputError(
                f"{what}: the ControlNet {self.name} gives residuals of {len(self.down_channels)} down blocks "
                f"{list(self.down_channels)} (+ middle {self.mid_channels}), but the model's UNet takes "
                f"{len(down)} {down} (+ {mid}); use a ControlNet made for this model's architecture")


def unet_residual_channels(unet) -> tuple[list[int], int]:
    """Channels of diffusers' down_block_additional_residuals (in order) and of the mid residual."""
    down = [unet.conv_in.out_channels]
    for block in unet.down_blocks:
        down += [r.out_channels for r in block.resnets]
        if getattr(block, "downsamplers", None):
            down += [d.out_channels for d in block.downsamplers]
    return down, unet.mid_block.resnets[-1].out_channels


# ----------------------------------------------------------------------------------------------------------
# ComfyUI's CONTROL_NET

def _timesteps(timestep, n: int, device, dtype) -> torch.Tensor:
    t = torch.as_tensor(timestep, device=device).to(torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(n)
    return t.to(dtype)


def cldm_residual_fn(control_net) -> Callable:
    """ResidualFn around a ComfyUI ControlNet object (``.control_model`` a cldm ControlNet)."""
    model = control_net.control_model

    def run(sample, timestep, text, cond):
        dtype = getattr(control_net, "manual_cast_dtype", None) or model.dtype
        dev = sample.device
        hint = getattr(control_net, "preprocess_image", lambda a: a)(cond.to(dev))
        extra = dict(getattr(control_net, "extra_args", {}) or {})
        out = model(x=sample.to(dtype), hint=hint.to(dev, dtype), timesteps=_timesteps(timestep, sample.shape[0], dev, dtype),
                    context=text.to(dev, dtype), y=None, **extra)
        down, mid = list(out["output"]), out["middle"][0]
        if getattr(control_net, "global_average_pooling", False):  # shuffle ControlNets, as ComfyUI does
            down = [r.mean(dim=(2, 3), keepdim=True).expand_as(r) for r in down]
            mid = mid.mean(dim=(2, 3), keepdim=True).expand_as(mid)
        return [r.to(sample.dtype) for r in down], mid.to(sample.dtype)

    return run


def _cldm_context_dim(model) -> Optional[int]:
    for name, m in model.named_modules():
        if name.endswith("attn2.to_k") and hasattr(m, "in_features"):
            return int(m.in_features)
    return None


def cldm_handle(control_net, name: str = "control_net") -> ControlNetHandle:
    """Handle for a ComfyUI ControlNet whose control model has cldm's layout (checked by comfy_controlnet)."""
    model = control_net.control_model
    return ControlNetHandle(
        residual_fn=cldm_residual_fn(control_net), compression=int(getattr(control_net, "compression_ratio", 8)),
        module=model, name=name, down_channels=[int(z[0].weight.shape[0]) for z in model.zero_convs],
        mid_channels=int(model.middle_block_out[0].weight.shape[0]), context_dim=_cldm_context_dim(model),
        in_channels=int(model.input_blocks[0][0].weight.shape[1]),
        patcher=getattr(control_net, "control_model_wrapped", None))


def comfy_controlnet(control_net) -> ControlNetHandle:
    """Handle for ComfyUI's CONTROL_NET; refuses the kinds Video-P2P cannot drive, with a message."""
    import comfy.cldm.cldm

    kind = type(control_net).__name__
    model = getattr(control_net, "control_model", None)
    if model is None or not isinstance(model, comfy.cldm.cldm.ControlNet):
        raise VP2PInputError(
            f"control_net: a {kind} (control model {type(model).__name__}) is not supported; expected an SD 1.x/2.x "
            "ControlNet from ControlNetLoader (control-LoRAs, T2I adapters and SD3/Flux/other ControlNets are not)")
    if getattr(control_net, "latent_format", None) is not None:
        raise VP2PInputError(f"control_net: this {kind} takes VAE-encoded hints; expected an SD 1.x/2.x ControlNet")
    if getattr(model, "control_add_embedding", None) is not None:
        raise VP2PInputError("control_net: union ControlNets (SD-XL) are not supported; expected an SD 1.x/2.x ControlNet")
    return cldm_handle(control_net, "from ControlNetLoader")


# ----------------------------------------------------------------------------------------------------------
# diffusers ControlNetModel folders

def set_controlnet_dirs(dirs: Optional[Sequence[os.PathLike]] = None) -> None:
    """Override the folders searched for diffusers ControlNets (tests, scripts); None: ComfyUI's / VP2P_HOME."""
    _DIRS.clear()
    _DIRS.extend(Path(d) for d in dirs or [])


def controlnet_dirs() -> list[Path]:
    if _DIRS:
        return list(_DIRS)
    try:
        import folder_paths  # ComfyUI's
    except ImportError:
        home = os.environ.get("VP2P_HOME")
        if home:
            return [Path(home) / "models" / "controlnet"]
        raise RuntimeError("diffusers_controlnet: not running in ComfyUI and VP2P_HOME is not set") from None
    return [Path(p) for p in folder_paths.get_folder_paths("controlnet")]


def safe_folder_name(name: str, what: str = "diffusers_controlnet") -> PurePosixPath:
    if not isinstance(name, str) or not name.strip():
        raise VP2PInputError(f"{what}: expected a folder name, got {name!r}")
    raw = name.strip().replace("\\", "/").rstrip("/")
    if raw.startswith(("/", "~")) or (len(raw) > 1 and raw[1] == ":"):
        raise VP2PInputError(f"{what}: {name!r} is an absolute path; give a folder name under models/controlnet")
    parts = raw.split("/")
    if any(p in ("", ".", "..") for p in parts) or any(ord(c) < 32 for c in raw):
        raise VP2PInputError(f"{what}: {name!r} may not contain '..', '.', empty parts or control characters; give "
                             "a folder name under models/controlnet such as 'control_v11f1p_sd15_depth'")
    return PurePosixPath(*parts)


def find_diffusers_controlnet(name: str, what: str = "diffusers_controlnet") -> Path:
    rel = safe_folder_name(name, what)
    roots = controlnet_dirs()
    for root in roots:
        path = root.joinpath(*rel.parts)
        root_abs = os.path.abspath(root)
        if os.path.commonpath([root_abs, os.path.abspath(path)]) != root_abs:
            raise VP2PInputError(f"{what}: {name!r} leaves the folder {root_abs}")
        if (path / "config.json").is_file():
            return path
    raise VP2PInputError(f"{what}: no diffusers ControlNet folder {str(rel)!r} (a folder with config.json and "
                         f"diffusion_pytorch_model.safetensors) in {', '.join(str(r) for r in roots)}")


def diffusers_handle(controlnet, name: str, patcher: Any = None) -> ControlNetHandle:
    cfg = controlnet.config
    return ControlNetHandle(
        residual_fn=diffusers_controlnet(controlnet),
        compression=2 ** (len(cfg.conditioning_embedding_out_channels) - 1), module=controlnet, name=name,
        down_channels=[int(b.out_channels) for b in controlnet.controlnet_down_blocks],
        mid_channels=int(controlnet.controlnet_mid_block.out_channels), context_dim=int(cfg.cross_attention_dim),
        in_channels=int(cfg.in_channels), patcher=patcher)


def load_diffusers_controlnet(name: str) -> ControlNetHandle:
    """A diffusers ControlNetModel folder under models/controlnet, offline; wrapped for ComfyUI's model management."""
    from diffusers import ControlNetModel

    path = find_diffusers_controlnet(name)
    mm = sys.modules.get("comfy.model_management")
    dtype = mm.unet_dtype() if mm is not None else torch.float32  # ComfyUI's choice for a model: fp16 on most GPUs
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):  # --fp8_*_unet, --fp64_unet: no manual cast here
        dtype = torch.float16 if mm.should_use_fp16() else torch.float32
    try:
        with torch.inference_mode(False):
            cn = ControlNetModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                                 torch_dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as e:
        raise VP2PInputError(f"diffusers_controlnet: could not load {str(path)!r} as a diffusers ControlNetModel "
                             f"(safetensors weights only): {e}") from None
    channels = int(getattr(cn.config, "conditioning_channels", 3))
    if channels != 3:  # the structure clip is an IMAGE: RGB
        raise VP2PInputError(f"diffusers_controlnet: {name!r} takes conditioning images of {channels} channels; "
                             "expected an RGB ControlNet (conditioning_channels 3), as the structure clip is an IMAGE")
    cn = cn.eval().requires_grad_(False)
    return diffusers_handle(cn, repr(name), _comfy_patcher(cn))


def _comfy_patcher(module):
    """ModelPatcher for a diffusers module inside ComfyUI; None outside it."""
    try:
        import comfy.model_management  # noqa: F401
    except ImportError:
        return None
    from .convert import make_patcher

    return make_patcher(module)
