"""Run with ComfyUI's python: converts a checkpoint's ComfyUI MODEL with nodes/convert.py and compares.

    python check_conversion.py COMFYUI_DIR CHECKPOINT REPO

Prints one JSON line: the converted UNet's max difference to ComfyUI's own UNet, the same with a
LoRA-style weight patch on the MODEL, whether the unpatched MODEL still gives its old output afterwards,
and whether ComfyUI's model management loads our ModelPatcher. Everything runs under
torch.inference_mode(), as nodes run in the server.
"""
import json
import sys
import time

import under_test


def main(comfy_dir, ckpt, repo):
    module = under_test.load(comfy_dir, repo)
    import torch
    import comfy.model_management as mm
    import comfy.sd

    convert = module("nodes.convert")

    torch.manual_seed(0)
    out = {}
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=True, output_clip=True)
        dm = model.model.diffusion_model
        x = torch.randn(2, 4, 16, 16)
        t = torch.tensor([10.0, 700.0])
        c = torch.randn(2, 77, 768)
        ref = dm(x, timesteps=t, context=c).float()
        start = time.perf_counter()
        unet, prediction, scale, latent_format, info = convert.comfy_model_to_unet(model, "fp32")
        out["convert_s"] = round(time.perf_counter() - start, 2)
        out["prediction"], out["scale"] = prediction, scale
        out["inference_params"] = any(p.is_inference() for p in unet.parameters())
        out["max_diff"] = float((unet(x, t, encoder_hidden_states=c).sample - ref).abs().max())
        out["ref_std"] = float(ref.std())

        key = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
        w = dm.state_dict()[key]
        diff = torch.randn(w.shape, generator=torch.Generator().manual_seed(1)) * 0.05
        patched = model.clone()
        patched.add_patches({"diffusion_model." + key: (diff,)}, 1.0)
        unet_p = convert.comfy_model_to_unet(patched, "fp32")[0]
        dkey = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
        got = dict(unet_p.named_parameters())[dkey] - dict(unet.named_parameters())[dkey]
        out["patch_diff_error"] = float((got - diff).abs().max())
        mm.load_models_gpu([model])  # the unpatched MODEL again: ComfyUI takes the patch back off
        out["model_unchanged_diff"] = float((model.model.diffusion_model(x, timesteps=t, context=c) - ref).abs().max())

        patcher = convert.make_patcher(unet)
        mm.load_models_gpu([patcher], force_full_load=True)
        out["patcher_loaded"] = any(lm.model is patcher for lm in mm.current_loaded_models)
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
