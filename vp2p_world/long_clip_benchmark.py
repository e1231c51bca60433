"""Clips of any length: the whole edit (tune, invert, edit, decode) on rendered clips of 16 to 128 frames, seen
through context windows, each length in a fresh process so that its peak memory is its own.

    python -m vp2p_world.long_clip_benchmark --frames 16,32,64,128 --context-length 16 --context-overlap 4

Per length: seconds per frame of the whole path and of each stage, peak RSS of the process, UNet evaluations
(clips per window call: one prompt x one window = 1; the rows the UNet saw per step, anchor rows included, are
``unet_rows_per_step``), edit accuracy (the object's colour in every frame), warp error
and flicker against the rendered truth, and the seam ratio: the frame-to-frame change (motion compensated) across
window boundaries over the change inside windows. The clip is one scene at every length: a red ball sliding on
textured grass under a panning camera, edited to a blue ball (the demo's edit), so the object moves the same
distance in every clip and a longer clip moves more slowly per frame.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from vp2p_core.files import atomic_write_text

WEIGHTS = Path(__file__).resolve().parent / "weights"
log = logging.getLogger("vp2p_world.long_clip_benchmark")


def scene(frames: int):
    from .render import Scene

    return Scene(shape="ball", colour="red", background="green grass", path="slide", camera="pan", texture=True,
                 frames=frames, resolution=64, seed=4)


def one_length(a: argparse.Namespace) -> dict:
    """The whole path on one clip length, in this process."""
    from vp2p_core import CompositeOptions, EditOptions, Host, InversionOptions, SamplerOptions, TuneOptions
    from vp2p_core.context import ContextWindows
    from vp2p_core.options import ContextOptions
    from vp2p_core.pipeline import Components, run

    from . import metrics
    from .render import render
    from .settings import options_from_args

    torch.manual_seed(0)
    if a.threads:
        torch.set_num_threads(a.threads)
    clip = render(scene(a.one))
    truth = render(clip.scene.replace(colour="blue"))
    source = clip.caption
    target = source.replace(" red ", " blue ", 1)
    tune = options_from_args(a, TuneOptions, prefix="tune-")
    inversion = options_from_args(a, InversionOptions)
    sampler = options_from_args(a, SamplerOptions, guidance=inversion.guidance)
    edit = options_from_args(a, EditOptions, blend_words="ball")
    composite = options_from_args(a, CompositeOptions)
    context = ContextWindows(options_from_args(a, ContextOptions))
    comps = Components.from_folder(WEIGHTS)
    t0 = time.perf_counter()
    res = run(comps, clip.frames, source, target, tune=tune, inversion=inversion, edit=edit, sampler=sampler,
              composite=composite, host=Host(), context=context)
    seconds = time.perf_counter() - t0
    edited, decoded = res.edited[0], res.decoded[0]
    f = a.one
    windows = context.windows(f)
    rows = sum(len(w) for w in windows)
    flicker = metrics.flicker(edited, truth)
    out = {
        "frames": f, "windows": len(windows), "unet_rows_per_step": rows,
        "seconds": round(seconds, 2), "seconds_per_frame": round(seconds / f, 4),
        "stage_seconds": {k: round(v, 2) for k, v in res.timings.items()},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "unet_evaluations": res.evaluations,
        "accuracy": metrics.object_hue_accuracy(edited, truth.masks, "blue"),
        "background_psnr": metrics.background_psnr(edited, clip.frames, metrics.object_region(clip, truth)),
        "warp_error": metrics.warp_error(edited, truth),
        "flicker_object": flicker["object"],
        "flicker_background": flicker["background"],
        "inversion_psnr": metrics.psnr(res.source, clip.frames),
    }
    if len(windows) > 1:
        out["seam_ratio_decoded"] = metrics.seam_ratio(decoded, windows, truth)
        out["seam_ratio_reconstruction"] = metrics.seam_ratio(res.source, windows, truth)
    return out


def parse_args(argv):
    from vp2p_core import CompositeOptions, EditOptions, InversionOptions, SamplerOptions, TuneOptions
    from vp2p_core.options import ContextOptions

    from vp2p_core.errors import VP2PInputError
    from vp2p_core.files import check_writable

    from .settings import add_option_flags, check_at_least

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", default="16,32,64,128", help="clip lengths, comma-separated")
    p.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # the child process: one length
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    add_option_flags(p, TuneOptions, prefix="tune-")
    add_option_flags(p, InversionOptions)
    add_option_flags(p, EditOptions, skip=("blend_words",))
    add_option_flags(p, SamplerOptions, skip=("guidance",))
    add_option_flags(p, CompositeOptions)
    add_option_flags(p, ContextOptions)
    a = p.parse_args(argv)
    try:
        a.lengths = [int(v) for v in a.frames.split(",") if v.strip()]
    except ValueError:
        p.exit(2, f"{p.prog}: error: --frames: expected clip lengths such as 16,32,64, got {a.frames!r}\n")
    if not a.lengths or min(a.lengths) < 2:
        p.exit(2, f"{p.prog}: error: --frames: expected lengths of 2 frames or more, got {a.frames!r}\n")
    try:  # the rows are written after every length has run
        check_at_least(a.threads, 0, "--threads", "a number of threads")
        if a.json:
            check_writable(a.json, "--json")
    except VP2PInputError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    return p, a


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p, a = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if a.one:
        print(json.dumps(one_length(a), default=float))
        return 0
    rest = [v for i, v in enumerate(argv) if not (v.startswith("--frames") or (i and argv[i - 1] == "--frames")
                                                   or v.startswith("--json") or (i and argv[i - 1] == "--json"))]
    rows = []
    from tqdm import tqdm

    for f in tqdm(a.lengths, desc="clip lengths"):
        r = subprocess.run([sys.executable, "-m", "vp2p_world.long_clip_benchmark", "--one", str(f), *rest],
                           capture_output=True, text=True)
        if r.returncode:
            sys.stderr.write(r.stderr[-4000:])
            return r.returncode
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"{'frames':>6} {'windows':>7} {'s/frame':>8} {'x':>5} {'peak MiB':>9} {'x':>5} {'accuracy':>8} "
          f"{'warp':>7} {'seam':>5}")
    for r in rows:
        print(f"{r['frames']:>6} {r['windows']:>7} {r['seconds_per_frame']:>8.3f} "
              f"{r['seconds_per_frame'] / base['seconds_per_frame']:>5.2f} {r['peak_rss_mib']:>9.0f} "
              f"{r['peak_rss_mib'] / base['peak_rss_mib']:>5.2f} {r['accuracy']:>8.2f} {r['warp_error']:>7.4f} "
              f"{r.get('seam_ratio_decoded', float('nan')):>5.2f}")
    if a.json:
        atomic_write_text(a.json, json.dumps({"argv": argv, "rows": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
