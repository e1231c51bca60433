"""Null-text budget: reconstruction against UNet evaluations, for several settings on several small-world clips.

    python -m bench.null_text_budget                              # the reference's settings and the defaults
    python -m bench.null_text_budget --settings "1,10,0;10,4,0.8;10,4,0;10,3,0.7" --clips 0,1,2

A setting is ``lr_scale,inner_steps,early_stop_ratio`` (InversionOptions). Each clip is rendered, the shipped model
is tuned on it (60 steps, as the demo), and each setting inverts it with 25 DDIM steps at guidance 7.5. The figure
is the latent PSNR of the source branch's last latent against the clip's latents (the reference harness's formula:
range of x0 squared over the MSE). Counts are exact: forwards (DDIM inversion included) and backward passes of the
UNet, in clips.
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

from .compare_pipeline import latent_psnr

WEIGHTS = Path(__file__).resolve().parents[1] / "vp2p_world" / "weights"
REFERENCE, DEFAULTS = "1,10,0", "{},{},{}".format(InversionOptions.lr_scale, InversionOptions.inner_steps,
                                                  InversionOptions.early_stop_ratio)


def clips():
    """Five clips: still and moving, flat and textured backgrounds, 8 and 16 frames (none is a benchmark case)."""
    from vp2p_world.render import Scene

    return [Scene(colour="red", shape="ball", background="green grass", path="bounce", seed=1),
            Scene(colour="blue", shape="square", background="sand", path="slide", seed=5, camera="pan",
                  lighting="drift", texture=True),
            Scene(colour="green", shape="triangle", background="water", path="circle", seed=9, camera="zoom"),
            Scene(colour="yellow", shape="star", background="sand", path="circle", seed=21, lighting="flicker",
                  occluder=True),
            Scene(colour="purple", shape="square", background="green grass", path="bounce", seed=33,
                  camera="pan+zoom", growth=1.4, texture=True, frames=16)]


def parse_setting(text: str) -> dict:
    try:
        lr, inner, ratio = text.split(",")
        return dict(lr_scale=float(lr), inner_steps=int(inner), early_stop_ratio=float(ratio))
    except ValueError:
        raise SystemExit(f"--settings: expected 'lr_scale,inner_steps,early_stop_ratio' (e.g. 10,4,0.8), got {text!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", default=f"{REFERENCE};{DEFAULTS}", help="';'-separated lr_scale,inner,ratio")
    p.add_argument("--clips", default="0,1,2,3,4", help="indices into the five clips")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--tune-steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from vp2p_world.render import render

    settings = [(s, parse_setting(s)) for s in a.settings.split(";") if s]
    comps = Components.from_folder(WEIGHTS)
    scenes = clips()
    for i in [int(x) for x in a.clips.split(",")]:
        clip = render(scenes[i])
        lat = comps.encode_frames(clip.frames)
        txt, empty = comps.encode_prompts([clip.caption]), comps.encode_prompts([""])
        with trained_weights(comps.model):
            delta = one_shot_tune(comps.model, latents=lat, text=txt, prompt=clip.caption,
                                  options=TuneOptions(steps=a.tune_steps, gradient_checkpointing=False))
        for name, kw in settings:
            t0 = time.perf_counter()
            with trained_weights(comps.model, delta):
                inv = invert(comps.model, lat, source_embedding=txt, empty_embedding=empty, prompt=clip.caption,
                             options=InversionOptions(steps=a.steps, **kw))
            print(json.dumps({"clip": i, "caption": clip.caption, "setting": name,
                              "latent_psnr": round(latent_psnr(inv.trajectory[-1], lat), 2),
                              "forwards": inv.stats["forwards"], "backwards": inv.stats["null_backwards"],
                              "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
