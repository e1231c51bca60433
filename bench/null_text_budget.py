"""Null-text budget: reconstruction against UNet evaluations, reference settings against a cheaper setting.

    python -m bench.null_text_budget            # the small-world model, one tuned clip, 25 DDIM steps

Counts are exact: forwards and backwards of the UNet in clips. The reference's own count for the same
steps follows from its loop (it steps Adam before testing the loss, then runs a 2-forward guided step):
per step 1 + 2k + 2 for k inner iterations.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vp2p_core import InversionOptions, TuneOptions, invert, one_shot_tune, trained_weights
from vp2p_core.pipeline import Components

WEIGHTS = Path(__file__).resolve().parents[1] / "vp2p_world" / "weights"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--tune-steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from vp2p_world.render import Scene, render

    comps = Components.from_folder(WEIGHTS)
    clip = render(Scene(colour="red", shape="ball", background="green grass", path="bounce", seed=1))
    lat = comps.encode_frames(clip.frames)
    txt, empty = comps.encode_prompts([clip.caption]), comps.encode_prompts([""])
    with trained_weights(comps.model):
        delta = one_shot_tune(comps.model, lat, txt, clip.caption,
                              options=TuneOptions(steps=a.tune_steps, gradient_checkpointing=False))
    rows = []
    for name, scale, inner in [("reference settings (lr x1, 10 inner)", 1.0, 10), ("lr x5, 4 inner", 5.0, 4),
                               ("lr x10, 3 inner", 10.0, 3)]:
        t0 = time.perf_counter()
        with trained_weights(comps.model, delta):
            inv = invert(comps.model, lat, source_embedding=txt, empty_embedding=empty, prompt=clip.caption,
                         options=InversionOptions(steps=a.steps, inner_steps=inner, lr_scale=scale))
        # the reference's loop on the same steps, which run all 10 iterations here (see the first row):
        # DDIM inversion + per step 1 cond forward + 10 x (forward + backward) + a 2-forward guided step
        ref_count = a.steps + a.steps * (1 + 2 * 10 + 2)
        rows.append({"setting": name, "mse": (inv.trajectory[-1] - lat).pow(2).mean().item(),
                     "forwards": inv.stats["forwards"], "backwards": inv.stats["null_backwards"],
                     "seconds": time.perf_counter() - t0, "reference_equivalent": ref_count})
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
