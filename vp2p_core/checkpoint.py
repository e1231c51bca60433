"""Original-layout Stable Diffusion 1.x / 2.x single-file checkpoints (.safetensors) -> diffusers modules.

Fully offline: every config is inferred from the tensor shapes (so smaller SD-shaped checkpoints load
too) and the key conversion uses diffusers' pure functions (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`); the OpenCLIP text encoder of SD2 is mapped here. Pickle checkpoints
(.ckpt/.pt/.bin/.pth) are refused: unpickling can run code.

What cannot be read from the weights follows SD's conventions:
- UNet attention heads: 8 heads per block (SD1.x, conv proj_in, context 768); head dim 64 (SD2.x, linear
  proj_in or context 1024). GroupNorm: 32 groups (UNet and VAE).
- Text encoder heads: hidden // 64 (CLIP-L 12, OpenCLIP-H 16). CLIP-L uses quick-gelu and its last layer;
  OpenCLIP uses gelu and its penultimate layer (the last resblock is dropped), as SD2 does. No clip-skip.
- VAE scaling factor 0.18215.
- Prediction type: a `v_pred` key means v-prediction; for an SD2.x UNet without it, ComfyUI's heuristic
  (std of output_blocks.11.1.transformer_blocks.0.norm1.bias > 0.09 -> v-prediction) is applied; else epsilon.
  Pass prediction_type explicitly to override.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .errors import VP2PInputError
from .model import check_text_to_image_unet
from .options import SD_LATENT_SCALE
from .schedule import PREDICTION_TYPES

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
OPEN_CLIP_H_WIDTH, OPEN_CLIP_H_LAYERS = 1024, 24  # SD 2.x's text encoder, OpenCLIP ViT-H/14
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")


@dataclass
class SingleFileModels:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    prediction_type: str
    family: str  # "sd1" | "sd2"
    latent_scale: float = SD_LATENT_SCALE


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the UNet / VAE / text-encoder tensors of a .safetensors SD checkpoint (refuses pickles)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        kind = "a pickle checkpoint, which is refused because loading it can run code" \
            if path.suffix.lower() in PICKLE_SUFFIXES else f"a {path.suffix or 'suffix-less'} file"
        raise VP2PInputError(f"checkpoint: {str(path)!r} is {kind}; expected an original-layout Stable Diffusion "
                             f"1.x/2.x checkpoint in .safetensors format (convert .ckpt files to .safetensors first)")
    if not path.is_file():
        raise VP2PInputError(f"checkpoint: {str(path)!r} does not exist")
    from safetensors import safe_open

    keep = (UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX, OPEN_CLIP_PREFIX)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
            check_layout(path, keys)  # before any tensor is read: an SDXL file is refused without reading 5 GB
            sd = {k: f.get_tensor(k) for k in keys if k.startswith(keep) or k == "v_pred"}
    except VP2PInputError:
        raise
    except Exception as e:  # header / format errors from safetensors
        raise VP2PInputError(f"checkpoint: {str(path)!r} is not a readable safetensors file ({e})") from None
    return sd


def check_layout(path, keys) -> None:
    has = lambda p: any(k.startswith(p) for k in keys)  # noqa: E731
    if has("conditioner.embedders.1.") or (has("conditioner.embedders.") and not has("conditioner.embedders.0.model.")):
        raise VP2PInputError(f"checkpoint: {str(path)!r} looks like SDXL; expected a Stable Diffusion 1.x/2.x "
                             f"checkpoint")
    if has("conditioner.embedders.0.model."):  # one OpenCLIP encoder in the sgm layout: SD 2.x, saved by sgm code
        raise VP2PInputError(f"checkpoint: {str(path)!r} is an SD 2.x checkpoint in the sgm layout "
                             "(conditioner.embedders.0.model.*), which is not read here; expected the original layout "
                             "(cond_stage_model.model.*), as ComfyUI's CheckpointSave writes it, or load it in ComfyUI")
    # ComfyUI's CheckpointSave marks a model sampled with another schedule: zero terminal SNR, EDM v-prediction
    if "ztsnr" in keys or has("edm_vpred."):
        raise VP2PInputError(f"checkpoint: {str(path)!r} is marked for "
                             f"{'zero terminal SNR' if 'ztsnr' in keys else 'EDM v-prediction'} sampling, which the "
                             "DDIM inversion here does not follow; expected a checkpoint for SD's own schedule")
    missing = []
    if UNET_PREFIX + "input_blocks.0.0.weight" not in keys:
        missing.append(f"UNet ({UNET_PREFIX}*)")
    if not has(VAE_PREFIX + "encoder.") or not has(VAE_PREFIX + "decoder."):
        missing.append(f"VAE ({VAE_PREFIX}*)")
    if not has(CLIP_PREFIX) and not has(OPEN_CLIP_PREFIX):
        missing.append(f"text encoder ({CLIP_PREFIX}* or {OPEN_CLIP_PREFIX}*)")
    if missing:
        raise VP2PInputError(f"checkpoint: {str(path)!r} is not an original-layout Stable Diffusion 1.x/2.x "
                             f"checkpoint (no {', no '.join(missing)}); expected a full model file with UNet, "
                             f"VAE and text encoder")


# ---------------------------------------------------------------- configs from shapes

def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def unet_config(sd: dict[str, torch.Tensor]) -> dict:
    """diffusers UNet2DConditionModel config for an LDM UNet (keys without the model.diffusion_model. prefix)."""
    keys = list(sd)
    conv_in = sd["input_blocks.0.0.weight"]
    mc = conv_in.shape[0]
    # input blocks 1..N: res blocks, plus a downsampler (".0.op") closing every level but the last
    levels, cur = [], []
    for i in _indices(keys, r"input_blocks\.(\d+)\."):
        if i == 0:
            continue
        if f"input_blocks.{i}.0.op.weight" in sd:
            levels.append(cur)
            cur = []
        else:
            cur.append(i)
    levels.append(cur)
    n_res = len(levels[0])
    if n_res == 0 or any(len(lv) != n_res for lv in levels):
        raise VP2PInputError("checkpoint: unsupported UNet layout (levels with different res-block counts)")
    mults, attn, depth = [], [], []
    for lv in levels:
        mults.append(sd[f"input_blocks.{lv[0]}.0.out_layers.3.weight"].shape[0] // mc)
        a = f"input_blocks.{lv[0]}.1."
        attn.append(any(k.startswith(a) for k in keys))
        depth.append(len(_indices(keys, re.escape(a) + r"transformer_blocks\.(\d+)\.")) or 1)
    t_keys = [k for k in keys if k.endswith("transformer_blocks.0.attn2.to_k.weight")]
    if not t_keys:
        raise VP2PInputError("checkpoint: the UNet has no cross-attention (not an SD 1.x/2.x text-to-image UNet)")
    context = sd[t_keys[0]].shape[1]
    proj = next(v for k, v in sd.items() if k.endswith(".proj_in.weight"))
    linear = proj.dim() == 2
    channels = [mc * m for m in mults]
    sd2 = linear or context == 1024
    heads = [max(1, c // 64) for c in channels] if sd2 else 8
    mid_depth = len(_indices(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\.")) or 1
    tlpb = depth[0] if len(set(depth + [mid_depth])) == 1 else depth
    return {
        "sample_size": 64,
        "in_channels": conv_in.shape[1],
        "out_channels": sd["out.2.weight"].shape[0],
        "block_out_channels": channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "layers_per_block": n_res,
        "cross_attention_dim": context,
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "transformer_layers_per_block": tlpb,
        "norm_num_groups": 32,
    }


def vae_config(sd: dict[str, torch.Tensor]) -> dict:
    """diffusers AutoencoderKL config for an LDM VAE (keys without the first_stage_model. prefix)."""
    keys = list(sd)
    levels = _indices(keys, r"encoder\.down\.(\d+)\.")
    channels = [sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in levels]
    n_res = len(_indices(keys, r"encoder\.down\.0\.block\.(\d+)\."))
    return {
        "in_channels": sd["encoder.conv_in.weight"].shape[1],
        "out_channels": sd["decoder.conv_out.weight"].shape[0],
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "latent_channels": sd["decoder.conv_in.weight"].shape[1],
        "layers_per_block": n_res,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": SD_LATENT_SCALE,
    }


def text_config(hf: dict[str, torch.Tensor], open_clip: bool) -> dict:
    tok = hf["embeddings.token_embedding.weight"]
    hidden = tok.shape[1]
    return {
        "vocab_size": tok.shape[0],
        "hidden_size": hidden,
        "intermediate_size": hf["encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": len(_indices(hf, r"encoder\.layers\.(\d+)\.")),
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": hf["embeddings.position_embedding.weight"].shape[0],
        "hidden_act": "gelu" if open_clip else "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
    }


# ---------------------------------------------------------------- text encoder keys

def clip_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """cond_stage_model.transformer.[text_model.]* (HF CLIP) -> transformers-5 CLIPTextModel keys."""
    out = {}
    for k, v in sd.items():
        if k.startswith(CLIP_PREFIX):
            k = k[len(CLIP_PREFIX):].removeprefix("text_model.")
            if not k.endswith("position_ids"):
                out[k] = v
    return out


def open_clip_to_hf(sd: dict[str, torch.Tensor], drop_last: bool = True) -> dict[str, torch.Tensor]:
    """cond_stage_model.model.* (OpenCLIP) -> CLIPTextModel keys; drops the last resblock (SD2 uses the
    penultimate layer, then ln_final). SD 2.x's encoder is OpenCLIP ViT-H (width 1024, 24 layers): a file holds
    all 24, or, converted back from diffusers (whose encoder keeps the 23 it uses), 23, of which none is dropped
    (as diffusers drops layer 23 by name and ComfyUI reads layer -2 of 24). Other widths (the tests' tiny
    encoders) hold one layer more than they use."""
    p = OPEN_CLIP_PREFIX
    blocks = _indices(sd, re.escape(p) + r"transformer\.resblocks\.(\d+)\.")
    if drop_last:
        vit_h = sd[p + "token_embedding.weight"].shape[1] == OPEN_CLIP_H_WIDTH
        blocks = [i for i in blocks if i < OPEN_CLIP_H_LAYERS - 1] if vit_h else blocks[:-1]
    out = {
        "embeddings.token_embedding.weight": sd[p + "token_embedding.weight"],
        "embeddings.position_embedding.weight": sd[p + "positional_embedding"],
        "final_layer_norm.weight": sd[p + "ln_final.weight"],
        "final_layer_norm.bias": sd[p + "ln_final.bias"],
    }
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    for i in blocks:
        src, dst = f"{p}transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for a, b in names.items():
            for s in ("weight", "bias"):
                out[f"{dst}{b}.{s}"] = sd[f"{src}{a}.{s}"]
        for s in ("weight", "bias"):
            q, k, v = sd[f"{src}attn.in_proj_{s}"].chunk(3, dim=0)
            out[f"{dst}self_attn.q_proj.{s}"] = q
            out[f"{dst}self_attn.k_proj.{s}"] = k
            out[f"{dst}self_attn.v_proj.{s}"] = v
    return out


# ---------------------------------------------------------------- loading

def _load(model: torch.nn.Module, sd: dict[str, torch.Tensor], what: str, path, assign: bool = False) -> None:
    """``assign``: the model was built on the meta device and takes the file's tensors themselves (no random
    initialisation, no second copy of its weights); every weight must then come from the file."""
    res = model.load_state_dict(sd, strict=False, assign=assign)
    missing = [k for k in res.missing_keys if not k.endswith("position_ids")]
    if assign:
        missing += [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
                    if t.is_meta and n not in missing]
    if missing or res.unexpected_keys:
        raise VP2PInputError(f"checkpoint: {str(path)!r}: the {what} does not match the layout inferred from its "
                             f"shapes (missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                             f"{res.unexpected_keys[:5]}{'...' if len(res.unexpected_keys) > 5 else ''})")


def guess_prediction_type(sd: dict[str, torch.Tensor], family: str) -> str:
    if "v_pred" in sd:
        return "v_prediction"
    if family == "sd2":
        b = sd.get(UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias")
        if b is not None and torch.std(b.float(), unbiased=False) > 0.09:
            return "v_prediction"
    return "epsilon"


def load_single_file(path: str | Path, prediction_type: Optional[str] = None,
                     dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> SingleFileModels:
    """Build diffusers UNet2DConditionModel, AutoencoderKL and transformers CLIPTextModel from one file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    if prediction_type not in (None,) + PREDICTION_TYPES:
        raise VP2PInputError(f"prediction_type: expected None, 'epsilon' or 'v_prediction', got {prediction_type!r}")
    ckpt = read_checkpoint(path)
    open_clip = any(k.startswith(OPEN_CLIP_PREFIX) for k in ckpt)

    try:
        u_sd = {k[len(UNET_PREFIX):]: v for k, v in ckpt.items() if k.startswith(UNET_PREFIX)}
        u_cfg = unet_config(u_sd)
        v_sd = {k[len(VAE_PREFIX):]: v for k, v in ckpt.items() if k.startswith(VAE_PREFIX)}
        v_cfg = vae_config(v_sd)
        t_sd = open_clip_to_hf(ckpt) if open_clip else clip_to_hf(ckpt)
        t_cfg = text_config(t_sd, open_clip)
    except (KeyError, StopIteration, IndexError) as e:
        raise VP2PInputError(f"checkpoint: {str(path)!r} does not have the Stable Diffusion 1.x/2.x layout "
                             f"(could not find {e})") from None
    if any(k.startswith(UNET_PREFIX + "label_emb.") for k in ckpt):
        raise VP2PInputError(f"checkpoint: {str(path)!r} has a class-conditioned UNet (label_emb: unCLIP, an "
                             "upscaler); expected an SD 1.x/2.x text-to-image checkpoint")
    check_text_to_image_unet(u_cfg, v_cfg["latent_channels"], what=f"checkpoint {str(path)!r}")
    family = "sd2" if (open_clip or u_cfg["use_linear_projection"]) else "sd1"
    pred = prediction_type or guess_prediction_type(ckpt, family)
    if family == "sd2" and pred == "v_prediction":
        u_cfg["upcast_attention"] = True  # as diffusers' SD2.x 768-v config

    del u_sd, v_sd
    # the UNet and the VAE built on the meta device take the file's tensors themselves (diffusers' models hold no
    # weight the file lacks); built as usual they were initialised at random in float32 and then copied into: an SD
    # 2.x fp32 file's UNet sat in memory twice. The text encoder has buffers of its own (position ids).
    with torch.device("meta"):
        unet = UNet2DConditionModel(**u_cfg)
    _load(unet, convert_ldm_unet_checkpoint(ckpt, u_cfg), "UNet", path, assign=True)
    ckpt = {k: v for k, v in ckpt.items() if not k.startswith(UNET_PREFIX)}
    with torch.device("meta"):
        vae = AutoencoderKL(**v_cfg)
    _load(vae, convert_ldm_vae_checkpoint(ckpt, v_cfg), "VAE", path, assign=True)
    del ckpt
    te = CLIPTextModel(CLIPTextConfig(**t_cfg))
    _load(te, t_sd, "text encoder", path)
    del t_sd
    device = torch.device(device)
    from .pipeline import vae_dtype

    mods = [torch.nn.Module.to(m, device, d).eval()  # (skips diffusers' fp32 notice)
            for m, d in ((unet, dtype), (vae, vae_dtype(dtype)), (te, dtype))]
    return SingleFileModels(unet=mods[0], vae=mods[1], text_encoder=mods[2], prediction_type=pred, family=family,
                            latent_scale=v_cfg["scaling_factor"])


# SD 2.x's OpenCLIP pads its prompts with "!" (token 0; its tokenizer config's pad_token, ComfyUI's SD2 tokenizer),
# SD 1.x's CLIP with the end token: the same BPE files serve both
PAD_TOKENS = {"sd1": None, "sd2": "!"}


def load_tokenizer(folder: str | Path, family: str = "sd1"):
    """The CLIP tokenizer whose files (vocab.json, merges.txt) are in ``folder``, offline, padding as the text
    encoder of ``family`` (sd1 / sd2) was trained. A single-file checkpoint holds none: the caller names the one
    its text encoder was trained with."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    if not (folder / "vocab.json").is_file():
        raise VP2PInputError(f"tokenizer: {str(folder)!r} has no CLIP tokenizer files (vocab.json, merges.txt)")
    pad = {} if PAD_TOKENS[family] is None else {"pad_token": PAD_TOKENS[family]}
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, local_files_only=True, **pad)
