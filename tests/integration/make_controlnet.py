"""Build a small random SD1.5-format ControlNet file (safetensors, ComfyUI's / lllyasviel's key layout) for a
checkpoint written by make_checkpoint.py, for ComfyUI tests.

    COMFYUI_DIR=<ComfyUI tree> <its venv>/bin/python tests/integration/make_controlnet.py CKPT OUT.safetensors --seed 0

The ControlNet is ComfyUI's own class (``comfy.cldm.cldm.ControlNet``) with the configuration ComfyUI detects
for the checkpoint's UNet (so it has the same levels: 4 down residuals for the small layout, 12 for SD1.5).
As ControlNet training starts, its encoder (time embedding, input blocks, middle block) is a copy of the
checkpoint's UNet; the hint block and the zero convolutions are random (seeded, weights N(0, 0.02), biases 0),
so the ControlNet is not silent. Keys have no prefix (``zero_convs.0.0.weight``, ``input_hint_block.0.weight``),
which ``comfy.controlnet.load_controlnet`` reads as an SD ControlNet.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from make_checkpoint import _comfy_path, init_weights  # noqa: E402

PREFIX = "model.diffusion_model."


def build_state_dict(ckpt, seed=0, dtype="fp16"):
    _comfy_path()
    import torch
    import comfy.cldm.cldm
    import comfy.model_detection
    import comfy.ops
    import comfy.utils

    sd = comfy.utils.load_torch_file(ckpt, safe_load=True)
    unet_sd = {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
    model_config = comfy.model_detection.model_config_from_unet(sd, PREFIX)
    cfg = dict(model_config.unet_config)
    cfg.pop("out_channels")
    cfg.update(hint_channels=3, operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="cpu")
    cn = comfy.cldm.cldm.ControlNet(**cfg)
    init_weights(cn, torch.Generator().manual_seed(int(seed)))
    own = cn.state_dict()
    copied = 0
    for k, v in unet_sd.items():
        if k in own and own[k].shape == v.shape:
            own[k] = v.to(own[k].dtype)
            copied += 1
    if not copied:
        raise RuntimeError("no UNet encoder weights matched the ControlNet")
    out_dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    return {k: (v.to(out_dtype) if v.is_floating_point() else v).contiguous() for k, v in own.items()}, copied


def write_controlnet(ckpt, path, seed=0, dtype="fp16"):
    _comfy_path()
    import comfy.utils

    sd, copied = build_state_dict(ckpt, seed, dtype)
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_cn_", suffix=".safetensors", dir=os.path.dirname(path))
    os.close(fd)
    try:
        comfy.utils.save_torch_file(sd, tmp, metadata={"vp2p_test_controlnet": f"random SD1.5 ControlNet seed={seed}"})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path, len(sd), copied


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a checkpoint from make_checkpoint.py")
    ap.add_argument("output", help="output .safetensors path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["fp16", "fp32", "bf16"], default="fp16")
    args = ap.parse_args(argv)
    t0 = time.time()
    path, n, copied = write_controlnet(args.checkpoint, args.output, args.seed, args.dtype)
    print("wrote %s (%d tensors, %d from the UNet encoder, %.1f MB) in %.1fs"
          % (path, n, copied, os.path.getsize(path) / 1e6, time.time() - t0))


if __name__ == "__main__":
    main()
