"""Choose Prompt-to-Prompt's settings for a model on held-out clips, not on the benchmark's own.

    python -m vp2p_world.sweep                      # the grid below on 6 validation clips, best first

Why: how many steps of attention injection pin the layout depends on the model. P2P's and Video-P2P's
defaults (source cross-attention maps for the first 20% of the steps, self-attention for 50%, local-blend
threshold 0.3) were set for Stable Diffusion at 512 px, where the layout is settled in the first steps and
the blend layers are 16x16. The small world's model settles its layout later, and its blend layers are
8x8, where local blend's 3x3 max-pool widens a mask by an eighth of the frame on each side. Each clip is
inverted once (DDIM, no tuning, no null-text: cheap and the same for every setting); every setting then
edits it, and the settings are ranked by PSNR against the rendered truth of the edit.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from pathlib import Path

import torch

from vp2p_core import (EditOptions, InversionOptions, SamplerOptions, VP2PInputError, invert, sample_edit,
                       trained_weights)
from vp2p_core.files import atomic_write_text, check_writable
from vp2p_core.pipeline import Components

from .benchmark import Case, case_edit, measure
from .render import Scene, render
from .settings import as_flag, check_at_least, check_clip_length, flag, option_values, world_options

WEIGHTS = Path(__file__).resolve().parent / "weights"


def validation_cases(frames: int = 4) -> list[Case]:
    """Colour and shape swaps on seeds (101+) that neither the edit nor the Gen-1 benchmark uses."""
    S = lambda **kw: Scene(frames=frames, **kw)
    return [
        Case("purple->green ball", "colour", S(colour="purple", shape="ball", background="sand", path="circle",
                                                  seed=101), {"colour": "green"}, blend="ball"),
        Case("blue->red triangle", "colour", S(colour="blue", shape="triangle", background="snow", path="slide",
                                                  seed=102), {"colour": "red"}, blend="triangle"),
        Case("red->yellow star", "colour", S(colour="red", shape="star", background="water", path="bounce",
                                                seed=103), {"colour": "yellow"}, blend="star"),
        Case("square->ball", "shape", S(colour="green", shape="square", background="gray road", path="bounce",
                                        seed=104), {"shape": "ball"}, blend="square", blend_target="ball"),
        Case("triangle->square", "shape", S(colour="purple", shape="triangle", background="green grass",
                                            path="circle", seed=105), {"shape": "square"}, blend="triangle",
             blend_target="square"),
        Case("ball->star", "shape", S(colour="yellow", shape="ball", background="sand", path="slide", seed=106),
             {"shape": "star"}, blend="ball", blend_target="star"),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(WEIGHTS))
    p.add_argument("--cross-replace", default="0.2,0.5,0.8")
    p.add_argument("--self-replace", default="0.5,0.8")
    p.add_argument("--mask-threshold", default="0.3,0.5")
    p.add_argument("--self-replace-on", default=world_options(EditOptions).self_replace_on,
                   choices=EditOptions.setting("self_replace_on").choices)
    p.add_argument("--steps", type=int, default=world_options(InversionOptions).steps)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default="", help="also write every row here")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:  # each value checked by its option before the model loads (a typo failed after the first inversion)
        axes = [option_values(getattr(a, name), flag(name), lambda v, n=name: EditOptions(**{n: v}))
                for name in ("cross_replace", "self_replace", "mask_threshold")]
        try:
            world_options(InversionOptions, mode="fast", steps=a.steps)
        except VP2PInputError as e:
            raise as_flag(e, "--steps") from None
        check_clip_length(a.frames)
        check_at_least(a.threads, 0, "--threads", "a number of threads")
        if a.json:
            check_writable(a.json, "--json")
        try:
            comps = Components.from_folder(a.model)
        except VP2PInputError as e:
            raise as_flag(e, "--model") from None
    except VP2PInputError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    if a.threads:
        torch.set_num_threads(a.threads)
    grid = list(itertools.product(*axes))
    rows = []
    for ci, case in enumerate(validation_cases(a.frames)):
        src = render(case.scene)
        latents = comps.encode_frames(src.frames)
        target = render(case.target_scene).caption
        with trained_weights(comps.model, None):
            inv = invert(comps.model, latents, source_embedding=comps.encode_prompts([src.caption]),
                         empty_embedding=comps.encode_prompts([""]), prompt=src.caption,
                         options=world_options(InversionOptions, mode="fast", steps=a.steps))
            for cross, self_, thr in grid:
                edit = world_options(EditOptions, cross_replace=cross, self_replace=self_, mask_threshold=thr,
                                     self_replace_on=a.self_replace_on)
                plan = comps.plan(src.caption, target, options=case_edit(case, edit))
                # the small world's sampler, as the demo and the benchmarks run it (edit guidance on)
                res = sample_edit(comps.model, inv, plan, options=world_options(SamplerOptions))
                row = measure(case, src, comps.decode_latents(res.edited[0]), comps.decode_latents(res.source))
                row.update(case=case.name, cross_replace=cross, self_replace=self_, mask_threshold=thr,
                           mask=float(res.blend_mask.float().mean()))
                rows.append(row)
                print(f"[{ci + 1}] {case.name:20s} cross {cross:.1f} self {self_:.1f} mask_threshold {thr:.1f}: "
                      f"acc {row['accuracy']:.2f} psnr {row['psnr_truth']:.2f} bg {row['bg_psnr']:.2f} "
                      f"mask {row['mask']:.2f}", flush=True)
    print("\n| cross_replace | self_replace | mask_threshold | PSNR to truth | accuracy | background PSNR | mask share |")
    print("|---|---|---|---|---|---|---|")
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)
    by_setting = {g: [r for r in rows if (r["cross_replace"], r["self_replace"], r["mask_threshold"]) == g] for g in grid}
    for g, rs in sorted(by_setting.items(), key=lambda item: -mean(item[1], "psnr_truth")):
        print(f"| {g[0]:.1f} | {g[1]:.1f} | {g[2]:.1f} | {mean(rs, 'psnr_truth'):.2f} | {mean(rs, 'accuracy'):.2f} | "
              f"{mean(rs, 'bg_psnr'):.2f} | {mean(rs, 'mask'):.2f} |")
    if a.json:
        atomic_write_text(a.json, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
