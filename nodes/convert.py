"""ComfyUI MODEL -> diffusers UNet2DConditionModel, once per InflateUNet run.

The ComfyUI model's weights are read *with its patches applied* (LoRAs, merges), renamed to diffusers'
layout with ``diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint`` and loaded into a UNet
whose config is built from ComfyUI's ``unet_config`` (no hub access). The ComfyUI model is not changed.

Only ``comfy_*`` functions touch ComfyUI, and they import it inside; the config builder and the
state-dict loader are plain diffusers and are tested without ComfyUI.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from vp2p_core import VP2PInputError
from vp2p_core.model import check_text_to_image_unet

log = logging.getLogger(__name__)

LDM_PREFIX = "model.diffusion_model."
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # InflationOptions.weight_dtype


def _per_level(values, levels: int, per_level: int, what: str) -> list[int]:
    """ComfyUI lists transformer depth per res block; diffusers per level. Refuse uneven levels."""
    values = list(values)
    if len(values) != levels * per_level:
        raise VP2PInputError(f"MODEL: {what} has {len(values)} entries, expected {levels}x{per_level}")
    out = []
    for i in range(levels):
        chunk = values[i * per_level:(i + 1) * per_level]
        if len(set(chunk)) != 1:
            raise VP2PInputError(f"MODEL: uneven {what} {values} is not an SD 1.x/2.x UNet")
        out.append(int(chunk[0]))
    return out


def diffusers_unet_config(unet_config: dict) -> dict:
    """diffusers UNet2DConditionModel kwargs for a ComfyUI SD 1.x/2.x ``unet_config``."""
    uc = dict(unet_config)
    if uc.get("adm_in_channels") or uc.get("num_classes") is not None:
        raise VP2PInputError("MODEL: class-conditioned UNets (SD-XL, unCLIP, upscalers) are not supported; "
                             "expected an SD 1.x/2.x checkpoint")
    if uc.get("use_temporal_attention") or uc.get("use_temporal_resblock"):
        raise VP2PInputError("MODEL: video UNets (SVD) are not supported; expected an SD 1.x/2.x checkpoint")
    context = uc.get("context_dim")
    if isinstance(context, (list, tuple)):
        context = context[0]
    if context is None or not uc.get("use_spatial_transformer", True):
        raise VP2PInputError("MODEL: expected an SD 1.x/2.x UNet with text cross-attention")
    mc = int(uc["model_channels"])
    mult = list(uc["channel_mult"])
    levels = len(mult)
    nrb = uc["num_res_blocks"]
    nrb = [nrb] * levels if isinstance(nrb, int) else list(nrb)
    if len(set(nrb)) != 1:
        raise VP2PInputError(f"MODEL: uneven num_res_blocks {nrb} is not an SD 1.x/2.x UNet")
    layers = int(nrb[0])
    depth = uc.get("transformer_depth", 1)
    down_depth = [int(depth)] * levels if isinstance(depth, int) else _per_level(depth, levels, layers, "transformer_depth")
    out_depth = uc.get("transformer_depth_output")  # ComfyUI lists it high-res level first, as the input side
    up_levels = (list(down_depth) if out_depth is None
                 else _per_level(out_depth, levels, layers + 1, "transformer_depth_output"))
    up_depth = list(reversed(up_levels))  # diffusers' up blocks start at the low-res level
    mid_depth = uc.get("transformer_depth_middle", down_depth[-1])
    if mid_depth is None or int(mid_depth) < 1:
        raise VP2PInputError("MODEL: expected a middle block with attention, as in SD 1.x/2.x")
    if any(d > 1 for d in down_depth + up_depth) or int(mid_depth) > 1:
        raise VP2PInputError("MODEL: transformer depth above 1 (SD-XL style) is not supported; expected SD 1.x/2.x")
    if list(reversed(down_depth)) != up_depth:
        raise VP2PInputError("MODEL: attention levels of the up path differ from the down path; not an SD 1.x/2.x UNet")
    block_out = [mc * m for m in mult]
    num_heads = uc.get("num_heads", -1)
    head_channels = uc.get("num_head_channels", -1)
    if num_heads is not None and num_heads > 0:
        heads: Any = int(num_heads)
    elif head_channels is not None and head_channels > 0:
        heads = [c // int(head_channels) for c in block_out]
    else:
        raise VP2PInputError("MODEL: unet_config gives neither num_heads nor num_head_channels")
    return {
        "sample_size": int(uc.get("image_size", 64) or 64),
        "in_channels": int(uc.get("in_channels", 4)),
        "out_channels": int(uc.get("out_channels", 4)),
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in down_depth],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in up_depth],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": block_out,
        "layers_per_block": layers,
        "cross_attention_dim": int(context),
        "attention_head_dim": heads,
        "use_linear_projection": bool(uc.get("use_linear_in_transformer", False)),
        "norm_num_groups": 32,
    }


def unet_from_ldm_state_dict(state_dict: dict, config: dict, dtype: torch.dtype = torch.float32):
    """Build the diffusers UNet from an LDM-layout state dict whose keys start with ``model.diffusion_model.``."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    if not any(k.startswith(LDM_PREFIX) for k in state_dict):
        raise VP2PInputError(f"MODEL: no UNet weights (keys starting with {LDM_PREFIX!r})")
    converted = convert_ldm_unet_checkpoint(state_dict, dict(config))
    with torch.inference_mode(False):
        converted = {k: v.detach().to("cpu", dtype, copy=True) if v.is_floating_point() else v.detach().clone()
                     for k, v in converted.items()}
        with torch.device("meta"):
            unet = UNet2DConditionModel(**config)
        expected = set(unet.state_dict())
        missing = sorted(expected - set(converted))
        unexpected = sorted(set(converted) - expected)
        if missing or unexpected:
            raise VP2PInputError(
                f"MODEL: the UNet weights do not fit an SD 1.x/2.x layout ({len(missing)} missing, e.g. "
                f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
        unet.load_state_dict(converted, strict=True, assign=True)
        leftover = [n for n, t in list(unet.named_parameters()) + list(unet.named_buffers()) if t.is_meta]
        if leftover:
            raise RuntimeError(f"diffusers UNet left uninitialised tensors: {leftover[:3]}")
    return unet.eval().requires_grad_(False)


# ComfyUI's model_sampling classes whose maths the DDIM steps here do not follow (comfy/model_sampling.py and
# ModelSamplingDiscrete's LCM); matched by class name so that nothing imports ComfyUI for it
# (the most specific first: it names the refusal)
UNSUPPORTED_SAMPLING = ("LCM", "IMG_TO_IMG", "X0", "EDM", "CONST", "COSMOS_RFLOW", "ModelSamplingDiscreteDistilled")


def comfy_prediction_type(model) -> str:
    """'epsilon' or 'v_prediction' from a ComfyUI MODEL: its ``model_sampling`` object, which ModelSamplingDiscrete
    replaces (an SD 1.x v-prediction finetune is set up that way), else the checkpoint's model type. Other
    parameterisations, distilled and zero-terminal-SNR schedules are refused: the DDIM steps follow SD's schedule."""
    sampling = model.get_model_object("model_sampling") if hasattr(model, "get_model_object") else None
    if sampling is None:
        kind = getattr(getattr(model.model, "model_type", None), "name", str(getattr(model.model, "model_type", "?")))
    else:
        names = [c.__name__ for c in type(sampling).__mro__]
        other = sorted((n for n in names if n in UNSUPPORTED_SAMPLING), key=UNSUPPORTED_SAMPLING.index)
        if getattr(sampling, "zsnr", False):
            raise VP2PInputError("MODEL: its sampling has zero terminal SNR (ModelSamplingDiscrete zsnr), which the "
                                 "DDIM inversion here does not follow; turn zsnr off")
        if int(getattr(sampling, "num_timesteps", 1000)) != 1000 or "ModelSamplingDiscrete" not in names:
            other = other or [names[0]]
        kind = other[0] if other else "V_PREDICTION" if "V_PREDICTION" in names else \
            "EPS" if "EPS" in names else names[0]
    if kind == "EPS":
        return "epsilon"
    if kind == "V_PREDICTION":
        return "v_prediction"
    raise VP2PInputError(f"MODEL: prediction type {kind} is not supported; expected an eps or v-prediction "
                         "SD 1.x/2.x checkpoint (ModelSamplingDiscrete: eps or v_prediction)")


def comfy_unet_state_dict(model) -> dict:
    """The UNet weights of a ComfyUI MODEL with its weight patches (LoRAs) applied, keys in LDM layout.

    All clones of a checkpoint's MODEL share one diffusion model, whose weights ComfyUI patches in place when it
    loads a clone. Where they hold no clone's patches, or this clone's, the patches are applied here, weight by
    weight: no copy of the whole checkpoint goes to the GPU only to be read. Where another clone's are in place
    (another LoRA; for a MODEL without patches, any), ``load_models_gpu`` takes them off and makes this clone's
    current. Modules ComfyUI loaded in low-VRAM mode keep unpatched weights,
    and get their patches applied here too. A weight patched here is patched as ComfyUI patches one when it loads
    the clone: in float32 on the clone's load device (one weight at a time), then rounded to its dtype, so that the
    result (and its fingerprint, which deltas, inversions and caches record) does not depend on which happened.
    """
    import comfy.float
    import comfy.lora
    import comfy.model_management as mm
    import comfy.model_patcher

    in_place = getattr(model.model, "current_weight_patches_uuid", None)
    if in_place is not None and in_place != model.patches_uuid:
        mm.load_models_gpu([model], force_full_load=True)
    sd = {}
    dm = model.model.diffusion_model
    for mname, module in dm.named_modules():
        patched = getattr(module, "comfy_patched_weights", False)
        for pname, p in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if p is None:
                continue
            key = f"{mname}.{pname}" if mname else pname
            w = p.detach()
            patch_key = f"diffusion_model.{key}"
            if patch_key in model.patches and not patched:  # as ModelPatcher.patch_weight_to_device does it
                w = mm.cast_to_device(w, model.load_device, torch.float32, copy=True)
                w = comfy.float.stochastic_rounding(comfy.lora.calculate_weight(model.patches[patch_key], w, patch_key),
                                                    p.dtype, seed=comfy.model_patcher.string_to_seed(patch_key))
            sd[LDM_PREFIX + key] = w.to("cpu")
    return sd


def comfy_weight_fingerprints(model, weight_dtype: str):
    """(base fingerprint, precision aliases) of a MODEL with weight patches (LoRAs), from its weights before the
    patches and the patches themselves (``vp2p_core.model.patched_base_fingerprints``): the patched values depend on
    the device that applied them, so a delta or inversion saved with a LoRA on one machine would not fit the same
    checkpoint and LoRA on another. None for a MODEL without weight patches (the weights' own fingerprint names
    it), or where a patched weight's original cannot be found (then the patched weights name it, as before).
    Call it after ``comfy_unet_state_dict``, which makes this clone's patches the ones in place."""
    import hashlib

    from vp2p_core.files import nested_digest
    from vp2p_core.model import patched_base_fingerprints

    patches = {k: v for k, v in (getattr(model, "patches", None) or {}).items() if k.startswith("diffusion_model.")}
    if not patches:
        return None
    backup = getattr(model, "backup", None) or {}
    unpatched = []
    for mname, module in model.model.diffusion_model.named_modules():
        in_place = getattr(module, "comfy_patched_weights", False)
        for pname, p in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if p is None:
                continue
            key = f"{mname}.{pname}" if mname else pname
            patch_key = f"diffusion_model.{key}"
            if patch_key in patches and in_place:
                if patch_key not in backup:
                    log.warning("Video-P2P: %s is patched in place without its original; the fingerprint is the "
                                "patched weights'", key)
                    return None
                p = backup[patch_key].weight
            unpatched.append((key, p.detach()))
    h = hashlib.sha256()
    try:
        for k in sorted(patches):
            h.update(k.encode())
            nested_digest(h, patches[k])
    except ValueError:  # a patch type nested deeper than LoRAs are: the patched weights name it, as before
        log.warning("Video-P2P: the weight patch on %s is nested too deep to fingerprint; the fingerprint is the "
                    "patched weights'", k)
        return None
    return patched_base_fingerprints(unpatched, h.hexdigest()[:16], TORCH_DTYPES[weight_dtype])


def ignored_model_patches(model) -> list[str]:
    """The MODEL's patches that are not weight patches (FreeU, IPAdapter, PAG, attention replacements, CFG
    functions, model wrappers): the conversion takes the weights (LoRAs applied) and model_sampling only, and the
    Video-P2P sampler runs its own guidance, so these have no effect on the edit."""
    options = getattr(model, "model_options", None) or {}
    names = [k for k in ("model_function_wrapper", "sampler_cfg_function", "sampler_pre_cfg_function",
                         "sampler_post_cfg_function", "sampler_calc_cond_batch_function", "denoise_mask_function",
                         "context_handler") if options.get(k)]
    transformer = options.get("transformer_options") or {}
    names += [f"transformer_options.{k}" for k in ("patches", "patches_replace") if transformer.get(k)]
    names += [f"object_patches.{k}" for k in (getattr(model, "object_patches", None) or {}) if k != "model_sampling"]
    if any(getattr(model, "wrappers", None) or {}):
        names.append("wrappers")
    return names


def comfy_model_to_unet(model, weight_dtype: str):
    """(diffusers UNet, prediction_type, latent_scale, latent_format, info) for a ComfyUI MODEL."""
    if not hasattr(model, "model") or not hasattr(model.model, "diffusion_model"):
        raise VP2PInputError(f"model: expected a ComfyUI MODEL (from a checkpoint loader), got {type(model).__name__}")
    ignored = ignored_model_patches(model)
    if ignored:
        log.warning("Video-P2P: the model's %s have no effect here: InflateUNet takes its weights (LoRAs applied) and "
                    "its model_sampling only, and the Video-P2P sampler runs its own guidance", ", ".join(ignored))
    prediction = comfy_prediction_type(model)
    unet_config = dict(model.model.model_config.unet_config)
    config = diffusers_unet_config(unet_config)
    latent_format = model.model.latent_format
    check_text_to_image_unet(config, int(getattr(latent_format, "latent_channels", 4)), what="MODEL")
    unet = unet_from_ldm_state_dict(comfy_unet_state_dict(model), config, TORCH_DTYPES[weight_dtype])
    info = {"prediction_type": prediction, "model": type(model.model.model_config).__name__,
            "patches": len(model.patches), "weight_dtype": weight_dtype}
    log.info("Video-P2P: converted %s UNet to diffusers (%s, %d weight patches applied)",
             info["model"], prediction, info["patches"])
    return unet, prediction, float(latent_format.scale_factor), latent_format, info


class UNetHolder(torch.nn.Module):
    """Plain module around the diffusers UNet: ComfyUI's ModelPatcher sets ``.device`` on the model it
    manages, which diffusers models expose as a read-only property."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.device = next(unet.parameters()).device


def make_patcher(unet):
    """Wrap the UNet so ``comfy.model_management.load_models_gpu`` counts, loads and offloads it."""
    import comfy.model_management as mm
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(UNetHolder(unet), load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())
