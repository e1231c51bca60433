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
        dkey = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"

        weights, fingerprints = [], []  # the patched weight and the fingerprints each read gave

        def patch_error():
            unet_p = convert.comfy_model_to_unet(patched, "fp32")[0]
            fingerprints.append(convert.comfy_weight_fingerprints(patched, "fp32"))
            weights.append(dict(unet_p.named_parameters())[dkey].detach().clone())
            got = weights[-1] - dict(unet.named_parameters())[dkey]
            return float((got - diff).abs().max())

        def loaded(patcher):
            return any(lm.model is patcher for lm in mm.current_loaded_models)

        # nothing loaded yet: the patch is applied where the weights are, and the clone is not loaded for it
        out["patch_diff_error"] = patch_error()
        out["patched_loaded_to_read"] = loaded(patched)
        mm.load_models_gpu([model])  # the unpatched MODEL loaded, as a KSampler would
        out["model_unchanged_diff"] = float((model.model.diffusion_model(x, timesteps=t, context=c) - ref).abs().max())
        other = model.clone()  # another clone's patch in place (another LoRA)
        other.add_patches({"diffusion_model." + key: (-diff,)}, 1.0)
        mm.load_models_gpu([other])
        plain = convert.comfy_model_to_unet(model, "fp32")[0]  # the MODEL without patches: not the other's LoRA
        out["plain_diff_other_in_place"] = float(max((a - b).abs().max() for a, b in
                                                     zip(plain.parameters(), unet.parameters())))
        mm.load_models_gpu([other])
        out["patch_diff_error_other_in_place"] = patch_error()  # ComfyUI swaps the patches: ours are read
        out["patch_diff_error_own_in_place"] = patch_error()  # ours in place now: read as they are
        # patched here or by ComfyUI when it loaded the clone: the same bits (the fingerprint hashes them)
        out["patch_reads_identical"] = all(torch.equal(weights[0], w) for w in weights[1:])
        # the fingerprint from the weights before the patches and the patches, wherever they were applied; None
        # without patches; another LoRA, another fingerprint
        out["patch_fingerprints_same"] = fingerprints[0] is not None and all(f == fingerprints[0] for f in fingerprints)
        out["plain_fingerprints"] = convert.comfy_weight_fingerprints(model, "fp32")
        out["other_fingerprint_differs"] = convert.comfy_weight_fingerprints(other, "fp32")[0] != fingerprints[0][0]
        mm.load_models_gpu([model])  # ComfyUI takes the patches back off
        out["model_unchanged_diff_after"] = float(
            (model.model.diffusion_model(x, timesteps=t, context=c) - ref).abs().max())

        from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

        out["v_override"] = convert.comfy_prediction_type(ModelSamplingDiscrete().patch(model, "v_prediction", False)[0])
        for sampling, zsnr in (("eps", True), ("lcm", False)):
            try:
                convert.comfy_prediction_type(ModelSamplingDiscrete().patch(model, sampling, zsnr)[0])
                out[f"refused_{sampling}"] = ""
            except Exception as e:  # VP2PInputError, from the module under test
                out[f"refused_{sampling}"] = str(e)

        patcher = convert.make_patcher(unet)
        mm.load_models_gpu([patcher], force_full_load=True)
        out["patcher_loaded"] = any(lm.model is patcher for lm in mm.current_loaded_models)
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
