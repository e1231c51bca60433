"""Edit-quality benchmark in the small world: every method on the same rendered clips and edits.

    python -m vp2p_world.benchmark                 # the full suite, writes the table into BENCHMARKS.md
    python -m vp2p_world.benchmark --cases 2 --steps 10 --tune-steps 10 --no-write   # a quick look
    python -m vp2p_world.benchmark --held-out 24 --methods videop2p_fast+composite   # 24 clips outside the suite

Methods: per-frame image P2P (no inflation effect, no tuning: every frame its own
image, its own null-text inversion), Tune-A-Video (inflate + tune + DDIM inversion + target prompt, no
attention control), Video-P2P with null-text, fast and negative-prompt inversion, and Video-P2P null-text and
fast (and, on request, per-frame P2P) with the decoded edit composited over the source frames through the
local-blend mask (``+composite``: vp2p_core.composite with the small world's CompositeOptions defaults; edits
without blend words, the background cases, stay as decoded). Each clip is tuned once; Tune-A-Video and the
Video-P2P variants share that delta. Every method sees the clip with its light taken out and gets it back on the
decoded frames (``--normalise-light``, the small world's default; ``--no-normalise-light``: as lit).

The suite: the first 12 cases are the original still-world ones (kept as they were so older figures compare);
the cases after them edit clips that move (camera pan / zoom, lighting drift / flicker, a growing object, an
occluder, a textured background) and still clips at twice the frame count (16 with the default ``--frames 8``).
No refinement case (a word added, "a red striped ball"): the renderer has no object pattern to render its truth.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vp2p_core import (CompositeOptions, EditOptions, InflationOptions, InversionOptions, LightOptions, SamplerOptions,
                       TuneOptions, invert, one_shot_tune, sample_edit, trained_weights)
from vp2p_core.composite import CHANGE_RAMP, composite_frames, image_mask, upsample_mask
from vp2p_core.errors import VP2PInputError
from vp2p_core.files import atomic_write_text, check_writable
from vp2p_core.light import take_light_out, with_light
from vp2p_core.pipeline import Components

from . import metrics
from .render import COLOURS, SHAPES, Scene, random_motion, random_scene, render
from .settings import (add_option_flags, check_at_least, check_clip_length, options_from_args,
                       world_options)

log = logging.getLogger("vp2p_world.benchmark")
WEIGHTS = Path(__file__).resolve().parent / "weights"
DEFAULT_METHODS = ("p2p_per_frame", "tune_a_video", "videop2p_null_text", "videop2p_fast", "videop2p_negative_prompt",
                   "videop2p_null_text+composite", "videop2p_fast+composite")
# also on request (tables list it after per-frame P2P): per-frame P2P composited the same way, so that the paper's
# second claim compares like with like; not a default because it inverts every frame again
METHODS = (DEFAULT_METHODS[0], "p2p_per_frame+composite", *DEFAULT_METHODS[1:])
COMPOSITE = "+composite"
# per-row figures: key -> (summary / per-case header, format)
COLUMNS = {"accuracy": ("edit accuracy", ".2f"), "shape_any_size": ("shape swaps: new shape at any size", ".2f"),
           "psnr_truth": ("PSNR to truth", ".2f"),
           "bg_psnr": ("background PSNR", ".2f"),
           "bg_exact": ("exact backgrounds", ".2f"), "bg_psnr_inexact": ("background PSNR of the others", ".2f"),
           "iou": ("structure IoU", ".3f"),
           "mask_iou": ("mask IoU", ".3f"), "mask_iou_worst": ("mask IoU worst frame", ".3f"),
           "image_mask_iou": ("image mask IoU", ".3f"), "image_mask_iou_worst": ("image mask IoU worst frame", ".3f"),
           "warp_error": ("warp error", ".4f"), "flicker_object": ("object flicker", ".4f"),
           "flicker_background": ("background flicker", ".4f"),
           "tc_object": ("object colour change", ".4f"), "tc_background": ("background change", ".4f"),
           "recon_psnr": ("inversion PSNR", ".2f"), "seconds": ("seconds", ".1f"),
           "evaluations": ("UNet evaluations", ".0f")}
LABELS = ("method", "case", "kind", "motion")  # row fields that are not figures
CASE_COLUMNS = ("accuracy", "shape_any_size", "psnr_truth", "bg_psnr", "iou", "mask_iou", "mask_iou_worst",
                "image_mask_iou", "image_mask_iou_worst", "warp_error",
                "flicker_object", "flicker_background", "tc_object", "tc_background", "recon_psnr")


@dataclass
class Case:
    name: str
    kind: str  # colour | shape | background | reweight
    scene: Scene
    change: dict
    blend: Optional[str] = None  # source blend words
    blend_target: Optional[str] = None
    reweight: Optional[dict] = None

    @property
    def target_scene(self) -> Scene:
        return self.scene.replace(**self.change)

    @property
    def moving(self) -> bool:
        """Whether anything but the object's path moves or changes: camera, light, growth, occluder, texture."""
        sc = self.scene
        return not sc.still or sc.growth != 1.0 or sc.texture


def suite(frames: int = 8) -> list[Case]:
    """The original 12 still cases at ``frames`` frames, then the moving ones and longer still ones (some at
    ``2 * frames``)."""
    return original_cases(frames) + world_cases(frames)


HELD_OUT_FIRST_SEED = 401


def held_out_cases(count: int, frames: int = 8, first_seed: int = HELD_OUT_FIRST_SEED) -> list[Case]:
    """``count`` random clips outside the suite (the ones BENCHMARKS.md quotes as held-out: seeds 401-424; edit
    guidance's strength was chosen on all of them and recolour_margin on their recolours, so their figures are
    in-sample for those). Clip i (seed first_seed + i) is a random scene, moving (random camera, light, growth,
    occluder, texture) when i is odd; every third (i % 3 == 2) swaps the object's shape for another, the rest its
    colour."""
    out = []
    for i in range(count):
        seed = first_seed + i
        rng = np.random.default_rng(seed)
        sc = random_scene(rng, frames=frames)
        if i % 2:
            sc = sc.replace(**random_motion(rng, sc.size))
        if i % 3 == 2:
            new = [s for s in SHAPES if s != sc.shape][int(rng.integers(len(SHAPES) - 1))]
            out.append(Case(f"{seed} {sc.shape}->{new}", "shape", sc, {"shape": new}, blend=sc.shape,
                            blend_target=new))
        else:
            cols = [c for c in COLOURS if c != sc.colour]
            new = cols[int(rng.integers(len(cols)))]
            out.append(Case(f"{seed} {sc.colour}->{new} {sc.shape}", "colour", sc, {"colour": new}, blend=sc.shape))
    return out


def original_cases(frames: int = 8) -> list[Case]:
    S = lambda **kw: Scene(frames=frames, **kw)
    return [
        Case("red->blue ball", "colour", S(colour="red", shape="ball", background="green grass", path="bounce", seed=1),
             {"colour": "blue"}, blend="ball"),
        Case("yellow->purple square", "colour", S(colour="yellow", shape="square", background="sand", path="slide", seed=2),
             {"colour": "purple"}, blend="square"),
        Case("green->red triangle", "colour", S(colour="green", shape="triangle", background="snow", path="circle", seed=3),
             {"colour": "red"}, blend="triangle"),
        Case("blue->yellow star", "colour", S(colour="blue", shape="star", background="gray road", path="bounce", seed=4),
             {"colour": "yellow"}, blend="star"),
        Case("ball->square", "shape", S(colour="red", shape="ball", background="sand", path="slide", seed=5),
             {"shape": "square"}, blend="ball", blend_target="square"),
        Case("square->triangle", "shape", S(colour="blue", shape="square", background="green grass", path="circle", seed=6),
             {"shape": "triangle"}, blend="square", blend_target="triangle"),
        Case("triangle->ball", "shape", S(colour="yellow", shape="triangle", background="water", path="bounce", seed=7),
             {"shape": "ball"}, blend="triangle", blend_target="ball"),
        Case("grass->sand", "background", S(colour="red", shape="ball", background="green grass", path="slide", seed=8),
             {"background": "sand"}),
        Case("sand->snow", "background", S(colour="blue", shape="square", background="sand", path="bounce", seed=9),
             {"background": "snow"}),
        Case("water->gray road", "background", S(colour="purple", shape="ball", background="water", path="circle", seed=10),
             {"background": "gray road"}),
        Case("red->purple ball, purple x2", "reweight", S(colour="red", shape="ball", background="snow", path="bounce", seed=11),
             {"colour": "purple"}, blend="ball", reweight={"purple": 2.0}),
        Case("green->blue square, blue x2", "reweight", S(colour="green", shape="square", background="gray road",
                                                        path="slide", seed=12),
             {"colour": "blue"}, blend="square", reweight={"blue": 2.0}),
    ]


def world_cases(frames: int = 8) -> list[Case]:
    """Edits in a world that moves (and still clips at twice the frames): each kind of edit under camera pan /
    zoom, lighting drift / flicker, growth, an occluder and a textured background, at ``frames`` and
    ``2 * frames``."""
    S = lambda **kw: Scene(frames=frames, **kw)
    L = lambda **kw: Scene(frames=2 * frames, **kw)
    return [
        Case("red->blue ball, pan", "colour", S(colour="red", shape="ball", background="green grass", path="bounce",
                                                 camera="pan", seed=13), {"colour": "blue"}, blend="ball"),
        Case("yellow->purple square, zoom, long", "colour",
             L(colour="yellow", shape="square", background="sand", path="slide", camera="zoom", seed=14),
             {"colour": "purple"}, blend="square"),
        Case("green->red triangle, light drift", "colour",
             S(colour="green", shape="triangle", background="snow", path="circle", lighting="drift", seed=15),
             {"colour": "red"}, blend="triangle"),
        Case("blue->yellow star, flicker, long", "colour",
             L(colour="blue", shape="star", background="gray road", path="bounce", lighting="flicker", seed=16),
             {"colour": "yellow"}, blend="star"),
        Case("red->blue ball, still, long", "colour",
             L(colour="red", shape="ball", background="water", path="slide", seed=17), {"colour": "blue"},
             blend="ball"),
        Case("ball->square, growing", "shape",
             S(colour="red", shape="ball", background="sand", path="slide", size=0.18, growth=1.5, seed=18),
             {"shape": "square"}, blend="ball", blend_target="square"),
        Case("square->triangle, occluder, long", "shape",
             L(colour="blue", shape="square", background="green grass", path="circle", occluder=True, seed=19),
             {"shape": "triangle"}, blend="square", blend_target="triangle"),
        Case("triangle->ball, pan+zoom", "shape",
             S(colour="yellow", shape="triangle", background="water", path="bounce", camera="pan+zoom", seed=20),
             {"shape": "ball"}, blend="triangle", blend_target="ball"),
        Case("grass->sand, texture, pan", "background",
             S(colour="red", shape="ball", background="green grass", path="slide", texture=True, camera="pan",
               seed=21), {"background": "sand"}),
        Case("sand->snow, zoom, light drift, long", "background",
             L(colour="blue", shape="square", background="sand", path="bounce", camera="zoom", lighting="drift",
               seed=22), {"background": "snow"}),
        Case("water->gray road, still, long", "background",
             L(colour="purple", shape="ball", background="water", path="circle", seed=23), {"background": "gray road"}),
        Case("red->purple ball, purple x2, occluder, pan, long", "reweight",
             L(colour="red", shape="ball", background="snow", path="bounce", occluder=True, camera="pan", seed=24),
             {"colour": "purple"}, blend="ball", reweight={"purple": 2.0}),
        Case("green->blue square, blue x2, growing, texture", "reweight",
             S(colour="green", shape="square", background="gray road", path="slide", growth=1.4, texture=True,
               seed=25), {"colour": "blue"}, blend="square", reweight={"blue": 2.0}),
        Case("purple->green ball, all motion, long", "colour",
             L(colour="purple", shape="ball", background="green grass", path="circle", camera="pan+zoom",
               lighting="flicker", growth=1.3, occluder=True, texture=True, seed=26), {"colour": "green"}, blend="ball"),
    ]


def unlit_frames(case: Case, edited: torch.Tensor, truth) -> torch.Tensor:
    """The frames with the truth's known light undone (frames / gains; the same frames where the light is steady),
    so that a dimmed frame of the right colour counts as right."""
    if case.scene.lighting != "none":
        return (edited / truth.gains[:, None, None, :]).clamp(0, 1)
    return edited


def edit_accuracy(case: Case, edited: torch.Tensor, truth) -> float:
    """Share of frames where the edited attribute is right: the object's hue and the background's colour judged on
    the ``unlit_frames``; a shape on the frames as they are, segmented against the truth's plates, which carry the
    light too."""
    ts = case.target_scene
    if case.kind == "shape":
        return metrics.shape_accuracy(edited, truth, render(case.scene))
    edited = unlit_frames(case, edited, truth)
    if case.kind in ("colour", "reweight"):
        return metrics.object_hue_accuracy(edited, truth.masks, ts.colour)
    return metrics.background_accuracy(edited, truth.masks, ts.background)


def shape_any_size(case: Case, edited: torch.Tensor, truth) -> float:
    """A shape swap's share of frames whose object is the new shape at whatever size it was drawn
    (``metrics.shape_any_size_accuracy``, segmented as ``edit_accuracy`` segments a shape); nan for other edits.
    Beside the accuracy, which also asks for the truth's size, it tells a wrong shape from the right shape at
    another size."""
    if case.kind != "shape":
        return float("nan")
    return metrics.shape_any_size_accuracy(edited, truth, case.target_scene.shape)


def blend_mask_iou(blend_mask: Optional[torch.Tensor], object_masks: torch.Tensor) -> tuple[float, float]:
    """The edit's mask (``EditResult.blend_mask``: [F,1,h,w] at latent size, or None) upsampled to frame size
    against the true object region ([F,H,W] bool: the source's and the target's object masks together): (mean
    IoU over frames, worst frame's IoU). nan, nan without a mask (no blend words, or no attention control)."""
    if blend_mask is None:
        return float("nan"), float("nan")
    m = upsample_mask(blend_mask[:, 0].gt(0.5), object_masks.shape[-2:], "blend mask").bool()
    return frame_ious(m, object_masks)


def frame_ious(mask: torch.Tensor, object_masks: torch.Tensor) -> tuple[float, float]:
    """(mean, worst) over frames of the IoU of a binary mask [F,H,W] with the true object region [F,H,W]."""
    ious = [metrics.mask_iou(mask[i].bool(), object_masks[i]) for i in range(object_masks.shape[0])]
    return sum(ious) / len(ious), min(ious)


def measure(case: Case, source_clip, edited: torch.Tensor, recon: torch.Tensor,
            blend_mask: Optional[torch.Tensor] = None, frame_mask: Optional[torch.Tensor] = None) -> dict:
    """The row's figures for one edit: ``edited`` and ``recon`` frames [F,H,W,3]; ``blend_mask`` the edit's
    LocalBlend mask [F,1,h,w] (None: no mask, its columns nan); ``frame_mask`` the composite's own binary mask
    [F,H,W] at frame size (None: not composited, its columns nan)."""
    truth = render(case.target_scene)
    obj_masks = source_clip.masks | truth.masks
    row = {
        "accuracy": edit_accuracy(case, edited, truth),
        "shape_any_size": shape_any_size(case, edited, truth),
        "psnr_truth": metrics.psnr(edited, truth.frames),
        "bg_psnr": (metrics.background_psnr(edited, source_clip.frames, metrics.object_region(source_clip, truth))
                    if case.kind != "background" else float("nan")),
        # the older definition (outside the masks, so the anti-aliased rim counted), for comparison
        "bg_psnr_masks": (metrics.background_psnr(edited, source_clip.frames, obj_masks)
                          if case.kind != "background" else float("nan")),
        "iou": metrics.mask_iou(metrics.segment_object(edited, truth), source_clip.masks),
        "recon_psnr": metrics.psnr(recon, source_clip.frames),
    }
    row["mask_iou"], row["mask_iou_worst"] = blend_mask_iou(blend_mask, obj_masks)
    row["image_mask_iou"], row["image_mask_iou_worst"] = (
        (float("nan"), float("nan")) if frame_mask is None else frame_ious(frame_mask, obj_masks))
    row["warp_error"] = metrics.normalised_warp_error(edited, truth)
    fl = metrics.flicker(edited, truth)
    row["flicker_object"], row["flicker_background"] = fl["object"], fl["background"]
    tc = metrics.temporal_consistency(edited, truth.masks)
    row["tc_object"], row["tc_background"] = tc["object"], tc["background"]
    return row


def case_edit(case: Case, edit: EditOptions) -> EditOptions:
    """The edit options with the case's own words (blend, reweight)."""
    rw = case.reweight or {}
    return edit.replace(blend_words=case.blend or "", blend_target_words=case.blend_target or "",
                        reweight_words=" ".join(rw), reweight_values=" ".join(f"{v:g}" for v in rw.values()))


def run_case(comps: Components, case: Case, method: str, delta, latents, inversion: InversionOptions,
             edit: EditOptions, sampler: SamplerOptions, frames: Optional[torch.Tensor] = None,
             composite: Optional[CompositeOptions] = None, light: Optional[torch.Tensor] = None) -> dict:
    """One method on one case. Tune-A-Video has no attention control; every method inverts with ``inversion``'s
    steps and guidance (null-text settings where it inverts with null-text). A ``+composite`` method pastes the
    decoded edit over ``frames`` (the source frames the latents were encoded from; default the clean render)
    through its blend mask with ``composite`` (default the small world's CompositeOptions). ``light``: the gains
    (``vp2p_core.light.take_light_out``) the latents were encoded without, put back on the decoded frames."""
    model = comps.model
    method, composited = (method[:-len(COMPOSITE)], True) if method.endswith(COMPOSITE) else (method, False)
    src = render(case.scene)
    source_prompt = src.caption
    target_prompt = render(case.target_scene).caption
    if method == "tune_a_video":  # the target prompt alone: no attention control, no guidance from the source
        edit, sampler = EditOptions(edit_mode="none"), sampler.replace(edit_guidance=0.0)
    else:
        edit = case_edit(case, edit)
    plan = comps.plan(source_prompt, target_prompt, options=edit)
    state = model.state
    e0, t0 = state.forward_clips, time.perf_counter()
    blend_mask = None
    if method == "p2p_per_frame":
        edited, recon, masks = [], [], []
        with trained_weights(model, None):
            for j in range(latents.shape[0]):
                inv = invert(model, latents[j:j + 1], source_embedding=plan.source_embedding,
                             empty_embedding=plan.empty_embedding, prompt=source_prompt,
                             options=inversion.replace(mode="null_text"))
                res = sample_edit(model, inv, plan, options=sampler)
                edited.append(res.edited[0])
                recon.append(res.source)
                masks.append(res.blend_mask)
        edited_lat, recon_lat = torch.cat(edited), torch.cat(recon)
        if all(m is not None for m in masks):
            blend_mask = torch.cat([m[0] for m in masks])
    else:
        mode = {"tune_a_video": "fast", "videop2p_null_text": "null_text", "videop2p_fast": "fast",
                "videop2p_negative_prompt": "negative_prompt"}[method]
        with trained_weights(model, delta):
            inv = invert(model, latents, source_embedding=plan.source_embedding, empty_embedding=plan.empty_embedding,
                         prompt=source_prompt, options=inversion.replace(mode=mode))
            res = sample_edit(model, inv, plan, options=sampler)
        edited_lat, recon_lat = res.edited[0], res.source
        blend_mask = None if res.blend_mask is None else res.blend_mask[0]
    seconds = time.perf_counter() - t0
    evals = state.forward_clips - e0
    edited_frames = with_light(comps.decode_latents(edited_lat), light)
    recon_frames = with_light(comps.decode_latents(recon_lat), light)
    frame_mask = None
    if composited and blend_mask is not None:  # no blend words (background cases): the edit as decoded
        options = composite or world_options(CompositeOptions)
        source_frames = src.frames if frames is None else frames
        # the composite's own mask at frame size (refined, without occluders, before its dilation): what Blend
        # Mask hands ComfyUI
        frame_mask = image_mask(blend_mask, edited_frames.shape[-3:-1], options, guides=(source_frames, edited_frames),
                                outline=res.blend_outline)
        edited_frames = composite_frames(edited=edited_frames, source=source_frames, mask=blend_mask, options=options,
                                         outline=res.blend_outline)
    row = measure(case, src, edited_frames, recon_frames, blend_mask, frame_mask)
    row.update(seconds=seconds, evaluations=evals)
    return row


def summarise(rows: list[dict]) -> dict:
    """Mean per method over cases (NaN entries skipped, and rows that lack a figure; NaN where every case is NaN).
    Methods in METHODS order, then any others in the rows' order. A background the composite gives back exactly
    scores metrics.MAX_PSNR, the metric's cap, which would dominate a mean of dB; so beside the plain mean, the share of
    exact backgrounds (``bg_exact``) and the mean over the others (``bg_psnr_inexact``)."""
    def mean(values):
        kept = [v for v in values if not math.isnan(v)]
        return sum(kept) / len(kept) if kept else float("nan")

    out = {}
    order = list(dict.fromkeys([*METHODS, *(r["method"] for r in rows)]))
    for m in order:
        rs = [r for r in rows if r["method"] == m]
        if rs:
            keys = dict.fromkeys(k for r in rs for k in r if k not in LABELS)
            out[m] = {k: mean([float(r.get(k, float("nan"))) for r in rs]) for k in keys}
            bg = [float(r["bg_psnr"]) for r in rs if not math.isnan(float(r.get("bg_psnr", float("nan"))))]
            if bg:
                out[m]["bg_exact"] = sum(v >= metrics.MAX_PSNR for v in bg) / len(bg)
                out[m]["bg_psnr_inexact"] = mean([v for v in bg if v < metrics.MAX_PSNR])
    return out


def cell(values: dict, key: str) -> str:
    """One table cell: the figure in its column's format, "nan" where missing."""
    v = values.get(key, float("nan"))
    return format(float(v), COLUMNS[key][1])


def markdown(summary: dict, rows: list[dict], command: str, meta: dict) -> str:
    keys = list(COLUMNS)
    head = "| method | " + " | ".join(COLUMNS[k][0] for k in keys) + " |"
    lines = ["## Small-world edit benchmark", "", f"Command: `{command}`", "",
             "Machine: " + meta["machine"] + f". {meta['cases']} cases, {meta['frames']} frames at 64x64 (the long cases "
             f"{2 * meta['frames']}), "
             f"{meta['steps']} DDIM steps, guidance {meta['guidance']}, null-text {meta['inner_steps']} inner steps at "
             f"{meta['lr_scale']:g}x the reference's learning rate{ratio_text(meta.get('early_stop_ratio', 0.0))}, "
             f"tuning {meta['tune_steps']} steps per clip "
             f"(shared by Tune-A-Video and the Video-P2P variants; its time is not in the rows: "
             f"{meta['tune_seconds']:.0f} s for all clips){inflation_text(meta.get('inflation'))}; "
             f"self-attention replaced on: {meta['edit']['self_replace_on']}; "
             f"{control_text(meta['edit'])}{noise_text(meta.get('frame_noise', 0.0))}"
             f"{composite_text(meta.get('composite'))}{light_text(meta.get('light'))}. "
             "Accuracy = share of frames with the target attribute (a shape swap: nearer the truth's shape and size "
             "than the source's); new shape at any size = a shape swap's share of frames whose object, fitted at its "
             "own size, is the new shape, on the frames where the truth's own object reads as that shape (nan for "
             "other edits); "
             "PSNR in dB; colour/background change = mean frame-to-frame change (lower is steadier); "
             "background PSNR excludes the background-change cases and every pixel an object touches (in the "
             "source or the truth: the anti-aliased rim changes colour in the truth too); mask IoU = the edit's mask "
             "(the local-blend mask; a shape swap's two outlines) at frame size against the source's and target's "
             "object region, mean over frames and worst frame "
             "(nan without a mask: Tune-A-Video, background cases); image mask IoU = the same for the composite's own "
             "mask at frame size, before its dilation (refined to the frames' edges where refine_radius is set, "
             "without the occluders occluder_threshold finds; +composite rows only); "
             "warp error = the per-frame noise sigma that "
             "would explain the edit's error under the known motion and light beyond its rendered truth's "
             "(metrics.normalised_warp_error); object / background flicker = frame-to-frame change beyond the "
             "truth's, motion and light compensated (metrics.flicker). `+composite`: the decoded edit pasted over "
             "the source frames through the blend mask.", "", head,
             "|" + "---|" * (len(keys) + 1)]
    for m, s in summary.items():
        lines.append(f"| {m} | " + " | ".join(cell(s, k) for k in keys) + " |")
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    lines += ["", "Edit accuracy by kind of edit:", "", "| method | " + " | ".join(kinds) + " |",
              "|---|" + "---|" * len(kinds)]
    for m in summary:
        accs = [[r["accuracy"] for r in rows if r["method"] == m and r["kind"] == k] for k in kinds]
        lines.append(f"| {m} | " + " | ".join(f"{sum(a) / len(a):.2f}" if a else "nan" for a in accs) + " |")
    motions = list(dict.fromkeys(r["motion"] for r in rows if "motion" in r))
    if len(motions) > 1:
        lines += ["", "Still clips (only the object moves) against moving ones (camera, light, growth, occluder or "
                  "texture):", "", "| method | " + " | ".join(f"{k} {w}" for w in motions for k in
                                                               ("accuracy", "mask IoU", "warp error")) + " |",
                  "|---|" + "---|" * (3 * len(motions))]
        for m in summary:
            by = {w: summarise([r for r in rows if r["method"] == m and r.get("motion") == w]).get(m, {})
                  for w in motions}
            lines.append(f"| {m} | " + " | ".join(cell(by[w], k) for w in motions
                                                   for k in ("accuracy", "mask_iou", "warp_error")) + " |")
    ok = successful_cases(rows)
    if ok:
        lines += ["", f"Temporal consistency on the {len(ok)} cases that every method edits in at least "
                  f"{SUCCESS:.0%} of frames ({', '.join(ok)}): the mean frame-to-frame change, not confounded by failed "
                  "edits, but not compensated for motion or light either (the flicker columns above are; on a moving "
                  "clip the truth changes too).", "",
                  "| method | object colour change | background change |", "|---|---|---|"]
        for m, s in summarise([r for r in rows if r["case"] in ok]).items():
            lines.append(f"| {m} | {cell(s, 'tc_object')} | {cell(s, 'tc_background')} |")
    lines += ["", "<details><summary>Per case</summary>", "",
              "| case | method | " + " | ".join(COLUMNS[k][0] for k in CASE_COLUMNS) + " |",
              "|---|---|" + "---|" * len(CASE_COLUMNS)]
    for r in rows:
        lines.append(f"| {r['case']} | {r['method']} | " + " | ".join(cell(r, k) for k in CASE_COLUMNS) + " |")
    lines += ["", "</details>", ""]
    return "\n".join(lines)


SUCCESS = 0.75


def control_text(edit: dict) -> str:
    return (f"attention control: source cross-attention maps for {edit['cross_replace']:.0%} of the steps, "
            f"self-attention for {edit['self_replace']:.0%}, local-blend threshold {edit['mask_threshold']:g}")


def light_text(light: Optional[dict]) -> str:
    return "; the clip's light taken out before encoding and put back after decoding" if light and \
        light.get("normalise_light") else ""


def composite_text(c: Optional[dict]) -> str:
    if not c:
        return ""
    change = c.get("change_threshold", 0.0)
    low, high = CHANGE_RAMP
    refine = c.get("refine_radius", 0)
    snapped = f" snapped to the frames' edges over {refine} px," if refine else ""
    occluder = c.get("occluder_threshold", 0.0)
    return (f"; +composite: mask{snapped} dilated "
            f"{c['mask_dilation']} px, feathered {c['feather']} px"
            + (f", pixels the edit changed by less than {low * change:g} (ramp to {high * change:g}) kept from the "
               "source" if change else "")
            + (f", pixels farther than {occluder:g} from the object's and the background's colours and their mixes "
               "(in front of the object) kept from the source" if occluder else ""))


def inflation_text(inflation: Optional[dict]) -> str:
    return (f"; ResNet GroupNorm statistics per {inflation['group_norm']}, frame attention "
            f"{inflation['frame_attention']}" if inflation else "")


def ratio_text(ratio: float) -> str:
    return f", stopping a step below {ratio:g} of its first loss" if ratio else ""


def noise_text(sigma: float) -> str:
    return (f"; every source frame gets its own Gaussian noise (sigma {sigma:g}); figures are against the clean "
            "renders" if sigma else "")


def noisy(frames: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """Independent per-frame noise, like a camera's: what per-frame editing turns into flicker."""
    if not sigma:
        return frames
    gen = torch.Generator().manual_seed(seed)
    return (frames + sigma * torch.randn(frames.shape, generator=gen)).clamp(0, 1)


def successful_cases(rows: list[dict], threshold: float = SUCCESS) -> list[str]:
    """Cases that every method in ``rows`` edits in at least ``threshold`` of the frames."""
    cases = list(dict.fromkeys(r["case"] for r in rows))
    return [c for c in cases if all(r["accuracy"] >= threshold for r in rows if r["case"] == c)]


def write_section(path: Path, section: str, heading: str = "## Small-world edit benchmark") -> None:
    """Replace (or append) our section of BENCHMARKS.md atomically, leaving the other sections alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start = text.find(heading)
    if start >= 0:
        nxt = text.find("\n## ", start + len(heading))
        text = text[:start] + (section.rstrip("\n") + "\n\n" + text[nxt + 1:] if nxt >= 0 else section)
    else:
        text = text.rstrip() + "\n\n" + section
    atomic_write_text(path, text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=0, help="run only the first N cases (0: all)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated, some of {', '.join(METHODS)}")
    p.add_argument("--only", default="", help="run only these cases, by name, separated by ';' "
                   "(e.g. 'red->blue ball, pan;ball->square, growing')")
    p.add_argument("--held-out", type=int, default=0, metavar="N",
                   help=f"instead of the suite, N random clips outside it (seeds {HELD_OUT_FIRST_SEED}..., "
                        "held_out_cases; 24 is the set BENCHMARKS.md quotes); their table is printed, never written "
                        "into BENCHMARKS.md. 0: the suite")
    add_option_flags(p, InflationOptions, skip=("weight_dtype",))
    add_option_flags(p, TuneOptions, prefix="tune-")
    add_option_flags(p, InversionOptions, skip=("mode",))  # each method has its inversion mode
    add_option_flags(p, EditOptions, skip=("edit_mode", "blend_words", "blend_target_words", "reweight_words",
                                           "reweight_values"))  # each case has its words
    add_option_flags(p, SamplerOptions, skip=("guidance",))
    add_option_flags(p, CompositeOptions, skip=("composite",))  # for the +composite methods
    add_option_flags(p, LightOptions)  # every method edits the clip as lit evenly, or every method as it is
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--frame-noise", type=float, default=0.0,
                   help="std of independent Gaussian noise added to every source frame (0: clean renders)")
    p.add_argument("--json", default="", help="also write the rows as JSON here")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    a = p.parse_args(argv)
    try:
        inflation = options_from_args(a, InflationOptions)
        tune = options_from_args(a, TuneOptions, prefix="tune-")
        inversion = options_from_args(a, InversionOptions)
        edit = options_from_args(a, EditOptions)
        sampler = options_from_args(a, SamplerOptions, guidance=inversion.guidance)
        composite = options_from_args(a, CompositeOptions, composite=True)  # the +composite methods composite
        light = options_from_args(a, LightOptions)
        check_clip_length(a.frames)
        check_at_least(a.cases, 0, "--cases", "a number of cases")
        check_at_least(a.threads, 0, "--threads", "a number of threads")
        if a.json:
            check_writable(a.json, "--json")
    except VP2PInputError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    if a.held_out < 0:
        p.exit(2, f"{p.prog}: error: --held-out: expected a number of clips >= 0, got {a.held_out}\n")
    logging.basicConfig(level=logging.WARNING)
    if a.threads:
        torch.set_num_threads(a.threads)
    comps = Components.from_folder(WEIGHTS, frame_attention=inflation.frame_attention,
                                   group_norm=inflation.group_norm)
    cases = (held_out_cases(a.held_out, frames=a.frames) if a.held_out else suite(a.frames))[: a.cases or None]
    if a.only:
        names = [n.strip() for n in a.only.split(";") if n.strip()]
        unknown = [n for n in names if n not in {c.name for c in cases}]
        if unknown:
            p.exit(2, f"{p.prog}: error: --only: no case named {unknown[0]!r}; the cases: "
                      f"{'; '.join(c.name for c in cases)}\n")
        cases = [c for c in cases if c.name in names]
    methods = [m for m in a.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.exit(2, f"{p.prog}: error: --methods: unknown {', '.join(unknown)}; expected some of {', '.join(METHODS)}\n")
    rows, tune_seconds = [], 0.0
    for ci, case in enumerate(cases):
        src = render(case.scene)
        source_frames = noisy(src.frames, a.frame_noise, 1000 + ci)
        to_encode, gains = take_light_out(source_frames, light.normalise_light)
        latents = comps.encode_frames(to_encode)
        delta = None
        if any(m.removesuffix(COMPOSITE) != "p2p_per_frame" for m in methods):  # per-frame P2P never tunes
            t0 = time.perf_counter()
            with trained_weights(comps.model, None):
                delta = one_shot_tune(comps.model, latents=latents, text=comps.encode_prompts([src.caption]),
                                      prompt=src.caption, options=tune)
            tune_seconds += time.perf_counter() - t0
        for m in methods:
            row = run_case(comps, case, m, delta, latents, inversion=inversion, edit=edit, sampler=sampler,
                           frames=source_frames, composite=composite, light=gains)
            row.update(method=m, case=case.name, kind=case.kind, motion="moving" if case.moving else "still")
            rows.append(row)
            print(f"[{ci + 1}/{len(cases)}] {case.name:28s} {m:28s} acc {row['accuracy']:.2f} "
                  f"psnr {row['psnr_truth']:.2f} bg {row['bg_psnr']:.2f} iou {row['iou']:.3f} "
                  f"mask {row['mask_iou']:.3f} warp {row['warp_error']:.4f} "
                  f"{row['seconds']:.1f}s {row['evaluations']} evals", flush=True)
    summary = summarise(rows)
    # quoted, so that a recorded --only 'red->blue ball' runs as it ran when pasted into a shell
    command = "python -m vp2p_world.benchmark " + shlex.join(argv if argv is not None else sys.argv[1:])
    meta = dict(machine=f"{os.cpu_count()}-core CPU, torch {torch.__version__}, {torch.get_num_threads()} threads",
                cases=len(cases), frames=a.frames, steps=inversion.steps, guidance=inversion.guidance,
                tune_steps=tune.steps, tune_seconds=tune_seconds, inner_steps=inversion.inner_steps,
                lr_scale=inversion.lr_scale, early_stop_ratio=inversion.early_stop_ratio, edit=edit.cache_key(),
                frame_noise=a.frame_noise, inflation=inflation.cache_key(),
                composite=composite.cache_key(), light=light.cache_key())
    md = markdown(summary, rows, command.strip(), meta)
    print(md)
    if a.json:
        atomic_write_text(a.json, json.dumps({"rows": rows, "summary": summary, "meta": meta}, indent=1))
    methods = {m for m in a.methods.split(",") if m}
    partial = a.held_out or a.cases or a.only or not methods >= set(DEFAULT_METHODS)
    if not a.no_write and not partial:
        write_section(Path(__file__).resolve().parents[1] / "BENCHMARKS.md", md)
    elif not a.no_write:  # a part of the run would replace the whole section and its analysis
        log.warning("a partial run (--held-out, --cases, --only or --methods without every default method): "
                    "BENCHMARKS.md is left as it is")
    return 0


if __name__ == "__main__":
    sys.exit(main())
