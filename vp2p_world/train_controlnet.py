"""Train the shipped tiny ControlNet of the small world: object mask -> frame (Gen-1's structure input).

    python -m vp2p_world.train_controlnet --model vp2p_world/weights --out vp2p_world/weights/controlnet

The UNet and text encoder stay frozen (ControlNet training as in Zhang et al.); the conditioning image is
the object's mask (white object on black, 3 channels) at frame resolution. Seeded; written atomically.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vp2p_core.errors import VP2PInputError
from vp2p_core.files import check_writable

from .train import MOVING_SHARE, command_line_pool, recorded_args, warmup_cosine, write_folder_atomically

log = logging.getLogger("vp2p_world.train_controlnet")
HERE = Path(__file__).resolve().parent


def mask_images(masks: torch.Tensor, ci, fi) -> torch.Tensor:
    """The conditioning images [N,3,H,W] in 0..1: the object's mask of each sampled frame."""
    return masks[ci, fi].float()[:, None].expand(-1, 3, -1, -1).contiguous()


def main(argv=None) -> int:
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(HERE / "weights"))
    p.add_argument("--out", default=str(HERE / "weights" / "controlnet"))
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--clips", type=int, default=600)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--moving", type=float, default=MOVING_SHARE,
                   help="share of the pool's clips with random camera, light, growth, occluder and texture")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch < 1 or a.clips < 1:
        p.error(f"--steps, --batch and --clips: expected at least 1 each, got {a.steps}, {a.batch}, {a.clips}")
    m = Path(a.model)
    missing = [sub for sub in ("tokenizer", "text_encoder", "vae", "unet") if not (m / sub).is_dir()]
    if missing:
        p.error(f"--model: {a.model!r} is not a model folder (no {', '.join(missing)})")
    try:  # written after the training
        check_writable(a.out, "--out", folder=True)
    except VP2PInputError as e:
        p.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    kw = dict(torch_dtype=torch.float32, local_files_only=True)
    tok = CLIPTokenizer.from_pretrained(str(m / "tokenizer"), model_max_length=77, local_files_only=True)
    te = CLIPTextModel.from_pretrained(m / "text_encoder", **kw).eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(m / "vae", **kw).eval().requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(m / "unet", **kw).eval().requires_grad_(False)
    torch.manual_seed(a.seed)
    factor = 64 // unet.config.sample_size
    steps_down = {4: (16, 32, 32), 8: (16, 32, 96, 256)}[factor]
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=steps_down)
    pool = command_line_pool(p, a.seed, clips=a.clips, moving=a.moving)
    pool.encode_all(vae)
    scale = vae.config.scaling_factor
    noise_sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    opt = torch.optim.AdamW(cn.parameters(), lr=3e-4, weight_decay=1e-2, fused=True)
    sched = warmup_cosine(opt, a.steps)
    gen = torch.Generator().manual_seed(a.seed + 1)
    t0, ema = time.perf_counter(), None
    cn.train()
    for step in tqdm(range(a.steps), desc="ControlNet", unit="step", disable=None):  # logged every 100 too
        ci, fi, caps = pool.sample(a.batch)
        drop = torch.rand(a.batch, generator=gen) < 0.1
        caps = ["" if d else c for d, c in zip(drop.tolist(), caps)]
        z = pool.latents[ci, fi] * scale
        cond = mask_images(pool.masks, ci, fi)
        with torch.no_grad():
            text = te(tok(caps, padding="max_length", max_length=77, truncation=True,
                          return_tensors="pt").input_ids)[0]
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, 1000, (a.batch,), generator=gen)
        noisy = noise_sched.add_noise(z, noise, t)
        down, mid = cn(noisy, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
        pred = unet(noisy, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(cn.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == a.steps - 1:
            log.info("controlnet %d/%d loss %.4f (%.0fs)", step + 1, a.steps, ema, time.perf_counter() - t0)
    out = Path(a.out)

    def write(tmp: Path) -> None:
        cn.eval().half().save_pretrained(tmp, safe_serialization=True)  # fp16 keeps the shipped folder small
        (tmp / "training.json").write_text(json.dumps({"loss": ema, "seconds": time.perf_counter() - t0,
                                                       "args": recorded_args(vars(a)), "condition": "object mask"},
                                                      indent=1))

    write_folder_atomically(out, write)
    print(f"controlnet written to {out} (loss {ema:.4f}, {time.perf_counter() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
