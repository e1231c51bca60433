"""Gen-1's two controls in the small world: structure fidelity t_s and temporal-consistency guidance w_t.

    python -m vp2p_world.gen1_benchmark            # writes its section of BENCHMARKS.md

1. Shape edit (ball -> square) steered by the shipped mask ControlNet with the *source* clip's masks as
   the structure, blurred at t_s = 0, 2, 4, 8: structure IoU against the source and shape accuracy move
   against each other (t_s = 0 keeps the ball's outline; larger t_s frees the shape).
2. Colour swaps sampled with w_t = 1, 1.5, 2: frame-to-frame change of the object's colour and of the
   background (lower is steadier), the warp error and flicker beyond the truth's (what motion does not
   explain), and the edit accuracy it costs.

    python -m vp2p_world.gen1_benchmark --moving   # the same clips under camera motion, changing light and growth

w_t exists to steady an edit, and only clips that move can show it: with ``--moving`` each clip gets one kind of
motion (``MOTIONS``) and the section "Gen-1 guidance on moving clips" is written instead.

As in the edit benchmark, each clip is edited with its light taken out and gets it back when decoded
(``--normalise-light``, the small world's default; ``--no-normalise-light``: as lit), and sampled with the small
world's sampler settings (edit guidance 2 for the first half of the steps; ``--edit-guidance 0``: none).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from vp2p_core import (EditOptions, InversionOptions, LightOptions, SamplerOptions, StructureGuidance,
                       StructureOptions, TuneOptions, diffusers_controlnet, invert, one_shot_tune, sample_edit,
                       trained_weights)
from vp2p_core.errors import VP2PInputError
from vp2p_core.light import take_light_out, with_light
from vp2p_core.pipeline import Components

from . import metrics
from .benchmark import write_section
from .render import Scene, render
from .settings import add_option_flags, option_values, options_from_args

WEIGHTS = Path(__file__).resolve().parent / "weights"

SHAPE_CLIPS = [Scene(colour="red", shape="ball", background="sand", path="slide", seed=21, size=0.2),
               Scene(colour="blue", shape="ball", background="green grass", path="bounce", seed=22, size=0.2),
               Scene(colour="yellow", shape="ball", background="gray road", path="circle", seed=23, size=0.2)]
COLOUR_CLIPS = [(Scene(colour="red", shape="ball", background="green grass", path="bounce", seed=31), "blue"),
                (Scene(colour="yellow", shape="square", background="sand", path="slide", seed=32), "purple"),
                (Scene(colour="green", shape="triangle", background="snow", path="circle", seed=33), "red")]

# --moving: the clips above, each under one mix of the world's motions (camera, light, growth)
MOTIONS = [dict(camera="pan"), dict(camera="zoom", lighting="drift"), dict(camera="pan+zoom", growth=1.3)]
SECTIONS = {False: "## Gen-1 guidance in the small world", True: "## Gen-1 guidance on moving clips"}


def moving(scenes: list[Scene]) -> list[Scene]:
    return [s.replace(**m) for s, m in zip(scenes, MOTIONS, strict=True)]


def prepare(comps: Components, scene: Scene, tune: TuneOptions, inversion: InversionOptions, light: LightOptions):
    """The clip, its tuned delta, its inversion and the gains to put its light back with (None: edited as lit)."""
    clip = render(scene)
    to_encode, gains = take_light_out(clip.frames, light.normalise_light)
    latents = comps.encode_frames(to_encode)
    text = comps.encode_prompts([clip.caption])
    with trained_weights(comps.model):
        delta = one_shot_tune(comps.model, latents=latents, text=text, prompt=clip.caption, options=tune)
    with trained_weights(comps.model, delta):
        inv = invert(comps.model, latents, source_embedding=text, empty_embedding=comps.encode_prompts([""]),
                     prompt=clip.caption, options=inversion)
    return clip, delta, inv, gains


def structure_rows(comps, controlnet, levels, tune: TuneOptions, inversion: InversionOptions,
                   edit: EditOptions, sampler: SamplerOptions, light: LightOptions, scenes: list[Scene]) -> list[dict]:
    fn = diffusers_controlnet(controlnet)
    rows = []
    for scene in scenes:
        clip, delta, inv, gains = prepare(comps, scene, tune, inversion, light)
        truth = render(scene.replace(shape="square"))
        plan = comps.plan(clip.caption, truth.caption,
                          options=edit.replace(blend_words="ball", blend_target_words="square"))
        masks = clip.masks.float()[..., None]
        h, w = inv.x_T.shape[-2:]
        for level in levels:
            sg = StructureGuidance.from_images(fn, masks, (h, w), clip.frames.shape[0],
                                               options=StructureOptions(structure_blur=level))
            with trained_weights(comps.model, delta):
                res = sample_edit(comps.model, inv, plan, options=sampler, structure=sg)
            frames = with_light(comps.decode_latents(res.edited[0]), gains)
            seg = metrics.segment_object(frames, truth)
            rows.append({"clip": scene.caption, "t_s": level, "iou_source": metrics.mask_iou(seg, clip.masks),
                         "shape_accuracy": metrics.shape_accuracy(frames, truth, clip)})
            print(rows[-1], flush=True)
    return rows


def temporal_rows(comps, weights, tune: TuneOptions, inversion: InversionOptions, edit: EditOptions,
                  sampler: SamplerOptions, light: LightOptions, clips: list[tuple[Scene, str]]) -> list[dict]:
    rows = []
    for scene, colour in clips:
        clip, delta, inv, gains = prepare(comps, scene, tune, inversion, light)
        truth = render(scene.replace(colour=colour))
        plan = comps.plan(clip.caption, truth.caption, options=edit.replace(blend_words=scene.shape))
        for wt in weights:
            t0 = time.perf_counter()
            with trained_weights(comps.model, delta):
                res = sample_edit(comps.model, inv, plan, options=sampler.replace(temporal_guidance=wt))
            frames = with_light(comps.decode_latents(res.edited[0]), gains)
            seconds = time.perf_counter() - t0  # the edit and its decode, not the figures below
            tc = metrics.temporal_consistency(frames, truth.masks)
            fl = metrics.flicker(frames, truth)
            rows.append({"clip": scene.caption, "w_t": wt, "object_change": tc["object"],
                         "background_change": tc["background"],
                         "warp_error": metrics.normalised_warp_error(frames, truth),
                         "flicker_object": fl["object"], "flicker_background": fl["background"],
                         "accuracy": metrics.object_hue_accuracy(frames, truth.masks, colour),
                         "psnr_truth": metrics.psnr(frames, truth.frames), "evaluations": res.stats["forwards"],
                         "seconds": seconds})
            print(rows[-1], flush=True)
    return rows


def mean_by(rows, key, fields):
    out = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return {k: {f: sum(r[f] for r in v) / len(v) for f in fields} for k, v in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_option_flags(p, TuneOptions, prefix="tune-")
    add_option_flags(p, InversionOptions, defaults={"mode": "fast"})
    p.add_argument("--levels", default="0,2,4,8", help="structure_blur (t_s) values, comma-separated")
    p.add_argument("--weights", default="1,1.5,2", help="temporal_guidance (w_t) values, comma-separated")
    add_option_flags(p, EditOptions, skip=("edit_mode", "blend_words", "blend_target_words", "reweight_words",
                                           "reweight_values"))  # each clip has its words
    add_option_flags(p, SamplerOptions, skip=("guidance", "temporal_guidance"))  # w_t: --weights
    add_option_flags(p, LightOptions)
    p.add_argument("--moving", action="store_true", help="the same clips under camera motion, changing light and "
                   "growth (MOTIONS); writes the section on moving clips")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    try:
        tune = options_from_args(a, TuneOptions, prefix="tune-")
        inversion = options_from_args(a, InversionOptions)
        edit = options_from_args(a, EditOptions)
        sampler = options_from_args(a, SamplerOptions, guidance=inversion.guidance)
        light = options_from_args(a, LightOptions)
        levels = option_values(a.levels, "--levels", lambda v: StructureOptions(structure_blur=v))
        wts = option_values(a.weights, "--weights", lambda v: sampler.replace(temporal_guidance=v))
    except VP2PInputError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    from diffusers import ControlNetModel

    comps = Components.from_folder(WEIGHTS)
    cn = ControlNetModel.from_pretrained(WEIGHTS / "controlnet", local_files_only=True,
                                         torch_dtype=torch.float32).eval()
    shape_clips = moving(SHAPE_CLIPS) if a.moving else SHAPE_CLIPS
    colour_clips = list(zip(moving([c for c, _ in COLOUR_CLIPS]), [t for _, t in COLOUR_CLIPS])) if a.moving \
        else COLOUR_CLIPS
    s_rows = structure_rows(comps, cn, levels, tune, inversion, edit, sampler, light, shape_clips)
    t_rows = temporal_rows(comps, wts, tune, inversion, edit, sampler, light, colour_clips)
    s = mean_by(s_rows, "t_s", ["iou_source", "shape_accuracy"])
    t = mean_by(t_rows, "w_t", ["object_change", "background_change", "warp_error", "flicker_object",
                                "flicker_background", "accuracy", "psnr_truth", "evaluations", "seconds"])
    cmd = "python -m vp2p_world.gen1_benchmark " + " ".join(argv if argv is not None else sys.argv[1:])
    motion = (" Motion per clip, in order: " + "; ".join(", ".join(f"{k} {v}" for k, v in m.items()) for m in MOTIONS)
              + ".") if a.moving else ""
    lit = (" Each clip is edited with its light taken out and gets it back when decoded." if light.normalise_light
           else "")
    edit_guidance = (f"edit guidance {sampler.edit_guidance:g} for the first {sampler.edit_guidance_steps:.0%} of the "
                     "steps" if sampler.edit_guidance else "no edit guidance")
    lines = [SECTIONS[a.moving], "", f"Command: `{cmd.strip()}`", "",
             f"Tuned model ({tune.steps} steps) per clip, {inversion.mode} inversion, {inversion.steps} DDIM steps, "
             f"guidance {inversion.guidance:g}, {edit_guidance}, {torch.get_num_threads()} threads, self-attention "
             f"replaced on: {edit.self_replace_on}. Structure: the shipped mask ControlNet "
             "(`vp2p_world/weights/controlnet`) fed the source clip's object masks, on "
             f"{len(shape_clips)} ball -> square clips (word swap + local blend on ball/square).{motion}{lit}", "",
             "| t_s | structure IoU with the source | shape accuracy (square) |", "|---|---|---|"]
    lines += [f"| {k:g} | {v['iou_source']:.3f} | {v['shape_accuracy']:.2f} |" for k, v in s.items()]
    lines += ["", f"Temporal-consistency guidance on {len(colour_clips)} colour swaps (word swap + local blend; "
              "warp error and flicker as in the edit benchmark: beyond the truth's, motion and light compensated):",
              "", "| w_t | object colour change | background change | warp error | object flicker | background flicker "
              "| colour accuracy | PSNR to truth | UNet evaluations | seconds |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {k:g} | {v['object_change']:.4f} | {v['background_change']:.4f} | {v['warp_error']:.4f} | "
              f"{v['flicker_object']:.4f} | {v['flicker_background']:.4f} | {v['accuracy']:.2f} | "
              f"{v['psnr_truth']:.2f} | {v['evaluations']:.0f} | {v['seconds']:.1f} |" for k, v in t.items()]
    md = "\n".join(lines) + "\n"
    print(md)
    if not a.no_write:
        write_section(Path(__file__).resolve().parents[1] / "BENCHMARKS.md", md, heading=SECTIONS[a.moving])
    return 0


if __name__ == "__main__":
    sys.exit(main())
