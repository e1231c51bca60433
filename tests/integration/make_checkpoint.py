"""Build a small random SD1.5-format single-file checkpoint (safetensors) for ComfyUI tests.

The file loads through ComfyUI's CheckpointLoaderSimple and is detected as SD1.5
(``comfy.supported_models.SD15``). It is built with ComfyUI's own classes, so it must run
with ComfyUI importable:

    COMFYUI_DIR=<ComfyUI tree> <its venv>/bin/python tests/integration/make_checkpoint.py OUT.safetensors --seed 0

Layout
- UNet (``model.diffusion_model.*``): ComfyUI detects SD1.5 by ``model_channels == 320``,
  ``context_dim == 768``, ``use_linear_in_transformer == False`` and no ADM input; the number of
  levels, res blocks and transformer depth are free. The default "small" layout keeps 320/768 but
  has two levels (channel_mult (1, 2)), one res block per level and one transformer block per
  level and in the middle (about 1/8 of the SD1.5 UNet). ``--layout full`` writes the real SD1.5 UNet layout.
- Text encoder (``cond_stage_model.transformer.text_model.*``): full CLIP-L (ComfyUI's SD1.5
  CLIP has a fixed config, so it cannot be shrunk).
- VAE (``first_stage_model.*``): full SD VAE (ComfyUI picks the VAE class from the key layout
  and assumes the SD channel widths).

All weights are random but finite, seeded: weights ~ N(0, 0.02), biases 0, norm weights 1.
The file is written to a temp file in the target folder and renamed into place.
"""

import argparse
import os
import sys
import tempfile
import time

SMALL_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1],
    "transformer_depth_output": [1, 1, 1, 1],
    "channel_mult": [1, 2],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}

FULL_UNET = dict(
    SMALL_UNET,
    num_res_blocks=[2, 2, 2, 2],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    channel_mult=[1, 2, 4, 4],
)

SD_VAE_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
    "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
}


def _comfy_path():
    comfy_dir = os.environ.get("COMFYUI_DIR", "")
    if not comfy_dir:
        sys.exit("set COMFYUI_DIR to a ComfyUI source tree (and run this with its python)")
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    if "comfy.model_management" not in sys.modules:
        # comfy.model_management picks its device at import time and fails on a CUDA build of
        # torch without a GPU unless told --cpu.
        import torch
        import comfy.cli_args

        if not torch.cuda.is_available():
            comfy.cli_args.args.cpu = True
    return comfy_dir


def init_weights(module, generator, std=0.02):
    """Explicit init: ComfyUI's layers (comfy.ops.disable_weight_init) are created uninitialised."""
    import torch

    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for mod_name, mod in sorted(module.named_modules(), key=lambda x: x[0]):
            is_norm = isinstance(mod, norm_types)
            for p_name, p in sorted(mod.named_parameters(recurse=False), key=lambda x: x[0]):
                if p_name == "bias":
                    p.zero_()
                elif is_norm:
                    p.fill_(1.0)
                elif p.ndim == 0:
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, std, generator=generator)
            for b_name, b in mod.named_buffers(recurse=False):
                if b.is_floating_point() and not torch.isfinite(b).all():
                    b.zero_()


def build_state_dict(seed=0, layout="small", dtype="fp16"):
    """Return the checkpoint state dict (original SD1.5 key layout)."""
    _comfy_path()
    import torch
    import comfy.supported_models
    import comfy.sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL

    unet_config = dict(SMALL_UNET if layout == "small" else FULL_UNET)
    model_config = comfy.supported_models.SD15(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    g = torch.Generator().manual_seed(int(seed))

    base_model = model_config.get_model({}, device=torch.device("cpu"))
    init_weights(base_model.diffusion_model, g)

    clip_model = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32)
    init_weights(clip_model, g)

    vae_model = AutoencoderKL(ddconfig=dict(SD_VAE_DDCONFIG), embed_dim=4)
    init_weights(vae_model, g)

    sd = base_model.state_dict_for_saving(
        clip_state_dict=clip_model.state_dict(), vae_state_dict=vae_model.state_dict()
    )
    out_dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    result = {}
    for k, v in sd.items():
        v = v.detach()
        if v.is_floating_point():
            v = v.to(out_dtype)
        if not torch.isfinite(v.float()).all():
            raise RuntimeError("non-finite weight in %s" % k)
        result[k] = v.contiguous()
    return result


def check_detection(sd):
    """Assert ComfyUI detects the state dict as SD15 and return the detected unet_config."""
    _comfy_path()
    import comfy.model_detection
    import comfy.supported_models

    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    assert prefix == "model.diffusion_model.", prefix
    mc = comfy.model_detection.model_config_from_unet(sd, prefix)
    if type(mc) is not comfy.supported_models.SD15:
        raise RuntimeError("ComfyUI detects %r, not SD15" % (type(mc).__name__,))
    return mc.unet_config


def write_checkpoint(path, seed=0, layout="small", dtype="fp16", check=True):
    _comfy_path()
    import comfy.utils

    sd = build_state_dict(seed=seed, layout=layout, dtype=dtype)
    if check:
        check_detection(sd)
    path = os.path.abspath(path)
    out_dir = os.path.dirname(path)
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_ckpt_", suffix=".safetensors", dir=out_dir)
    os.close(fd)
    try:
        comfy.utils.save_torch_file(sd, tmp, metadata={"vp2p_test_checkpoint": "random SD1.5 layout=%s seed=%s" % (layout, seed)})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("output", help="output .safetensors path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layout", choices=["small", "full"], default="small",
                    help="small: 2-level SD1.5-detected UNet (default); full: real SD1.5 UNet layout")
    ap.add_argument("--dtype", choices=["fp16", "fp32", "bf16"], default="fp16")
    ap.add_argument("--no-check", action="store_true", help="skip the ComfyUI SD15 detection check")
    args = ap.parse_args(argv)
    t0 = time.time()
    path = write_checkpoint(args.output, seed=args.seed, layout=args.layout, dtype=args.dtype, check=not args.no_check)
    print("wrote %s (%.1f MB) in %.1fs" % (path, os.path.getsize(path) / 1e6, time.time() - t0))


if __name__ == "__main__":
    main()
