"""How far an edit with half-precision weights lands from the float32 edit, on the small world (BENCHMARKS.md,
"Editing with half-precision weights").

    python -m bench.half_precision --threads 2

One rendered clip (the demo's red ball bouncing on grass), the shipped model tuned on it in float32, then fast
inversion and a recolour edit ("red" -> "blue", local blend on "ball") three times from the same tuned weights:
float32, bf16 and fp16 (the UNet cast, as InflateUNet's ``weight_dtype`` does; tuning and null-text inversion need
float32, so an fp16 / bf16 model edits with a delta and an inversion made at float32, or inverts with ``fast``).
Printed per precision: the relative error (RMS of the difference over RMS of the float32 result) of x_T, of the
edited latents and of the source branch's latents. fp16 on a CPU is slow (about 2 minutes here).
"""
from __future__ import annotations

import argparse
import logging

import torch


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--tune-steps", type=int, default=30)
    p.add_argument("--steps", type=int, default=20, help="DDIM steps of the inversion and the edit")
    p.add_argument("--seed", type=int, default=3, help="the rendered clip's seed")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.WARNING)
    from vp2p_core import EditOptions, InversionOptions, SamplerOptions, TuneOptions, invert, one_shot_tune, sample_edit
    from vp2p_core.pipeline import Components
    from vp2p_world.evaluate import WEIGHTS
    from vp2p_world.render import Scene, render

    comps = Components.from_folder(WEIGHTS)
    clip = render(Scene(frames=8, resolution=64, colour="red", shape="ball", background="green grass", path="bounce",
                        seed=a.seed))
    source, target = "a red ball bouncing on green grass", "a blue ball bouncing on green grass"
    latents = comps.encode_frames(clip.frames)
    plan = comps.plan(source, target, options=EditOptions(blend_words="ball"))
    torch.manual_seed(0)
    one_shot_tune(comps.model, latents=latents, text=plan.source_embedding, prompt=source,
                  options=TuneOptions(steps=a.tune_steps))
    inversion = InversionOptions(mode="fast", steps=a.steps)
    unet = comps.model.unet

    def edit():
        inv = invert(comps.model, latents, source_embedding=plan.source_embedding,
                     empty_embedding=plan.empty_embedding, prompt=source, options=inversion)
        res = sample_edit(comps.model, inv, plan, options=SamplerOptions())
        return inv.x_T, res.edited, res.source

    reference = edit()
    weights = {k: v.clone() for k, v in unet.state_dict().items()}
    print(f"{'weights':>9} | {'x_T':>7} | {'edited':>7} | {'source':>7}   (relative to float32)")
    for dtype in (torch.bfloat16, torch.float16):
        unet.to(dtype)
        errors = [relative(x, r) for x, r in zip(edit(), reference)]
        print(f"{str(dtype).replace('torch.', ''):>9} | " + " | ".join(f"{e:7.4f}" for e in errors), flush=True)
        unet.float()
        unet.load_state_dict(weights)  # the float32 weights again, not their half-precision rounding
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
