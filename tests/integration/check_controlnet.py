"""Run with ComfyUI's python: nodes/controlnet.py's adapter for ComfyUI's CONTROL_NET against ComfyUI's own
ControlNet apply path.

    python check_controlnet.py COMFYUI_DIR CHECKPOINT CONTROLNET REPO

ComfyUI's path: ``ControlNet.set_cond_hint`` (strength 0.8) -> ``pre_run`` -> ``get_control`` on its sigma-space
input, then its own UNet with ``control=``. Ours: the adapter on the DDPM x_t at the same timestep, its residuals
(x 0.8, as the core's StructureGuidance scales them) into the converted diffusers UNet's
``down_block_additional_residuals`` / ``mid_block_additional_residual``. Prints one JSON line: the residuals'
count, channels and largest difference (in order), the UNet outputs' difference, how much the ControlNet changes
the output, that zero residuals equal no ControlNet, and that the host loads the ControlNet through ComfyUI's
model management together with the video model. Runs under torch.inference_mode(), as nodes do.
"""
import json
import sys
import time

import under_test


def main(comfy_dir, ckpt, cn_path, repo):
    module = under_test.load(comfy_dir, repo)
    import torch
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.sd

    convert = module("nodes.convert")
    controlnet = module("nodes.controlnet")
    host_mod = module("nodes.host")
    types_mod = module("nodes.types")

    out = {}
    strength = 0.8
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        model, _, _, _ = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=False, output_clip=False)
        cnet = comfy.controlnet.load_controlnet(cn_path)
        out["control_net"] = type(cnet).__name__
        t0 = time.perf_counter()
        handle = controlnet.comfy_controlnet(cnet)
        unet = convert.comfy_model_to_unet(model, "fp32")[0]
        handle.check_fits(unet)
        out["compression"] = handle.compression

        x_t = torch.randn(2, 4, 8, 8, generator=g)
        hint = torch.rand(2, 3, 64, 64, generator=g)
        c = torch.randn(2, 77, 768, generator=g)
        ms = model.model.model_sampling
        sigma = ms.sigma(torch.tensor([600.0, 600.0]))
        ts = ms.timestep(sigma).float()
        out["timestep"] = float(ts[0])

        # ComfyUI's own apply path (what KSampler does with Apply ControlNet)
        mm.load_models_gpu([model, cnet.control_model_wrapped])
        ctrl = cnet.copy().set_cond_hint(hint, strength, (0.0, 1.0))
        ctrl.pre_run(model.model, lambda p: ms.percent_to_sigma(p))
        x_noisy = x_t * (sigma.view(-1, 1, 1, 1) ** 2 + 1) ** 0.5
        control = ctrl.get_control(x_noisy, sigma, {"c_crossattn": c}, 1, {})
        ref_down = [r.clone() for r in control["output"]]
        ref_mid = control["middle"][0].clone()
        dm = model.model.diffusion_model
        ref = dm(x_t, timesteps=ts, context=c, control=control).float()
        plain = dm(x_t, timesteps=ts, context=c).float()
        ctrl.cleanup()

        # ours
        down, mid = handle.residual_fn(x_t, ts, c, hint)
        down = [r * strength for r in down]
        mid = mid * strength
        out["residuals"] = len(down)
        out["channels"] = [int(r.shape[1]) for r in down]
        out["order_ok"] = [tuple(a.shape) for a in down] == [tuple(b.shape) for b in ref_down]
        out["residual_max_diff"] = max(float((a - b).abs().max()) for a, b in zip(down + [mid], ref_down + [ref_mid]))
        out["residual_scale"] = float(ref_mid.abs().max())
        ours = unet(x_t, ts, encoder_hidden_states=c, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        out["unet_max_diff"] = float((ours - ref).abs().max())
        out["ref_std"] = float(ref.std())
        out["control_effect"] = float((ref - plain).abs().max())
        zeros = unet(x_t, ts, encoder_hidden_states=c, down_block_additional_residuals=[r * 0 for r in down],
                     mid_block_additional_residual=mid * 0).sample
        out["zero_strength_diff"] = float((zeros - unet(x_t, ts, encoder_hidden_states=c).sample).abs().max())
        out["adapter_s"] = round(time.perf_counter() - t0, 2)

        # the host loads the video model and the ControlNet together through ComfyUI's model management
        mm.unload_all_models()
        vm = types_mod.vp2p_model_from_unet(unet, patcher=convert.make_patcher(unet))
        host = host_mod.make_host(vm, previews=False, extra=[handle])
        host.load_module(vm.video.unet)
        loaded = [lm.model for lm in mm.current_loaded_models]
        out["controlnet_loaded"] = any(m is cnet.control_model_wrapped for m in loaded)
        out["video_model_loaded"] = any(m is vm.patcher for m in loaded)
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:5])
