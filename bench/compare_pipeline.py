"""Our whole pipeline beside the official Video-P2P one, stage by stage, on the very same model folder and clip.

    # the tiny random SD-shaped model; the reference side runs the official code unchanged in its own environment
    # (../shared/reference/REF_PIPELINE.md says how to make it), writes WORK/tiny_sd and WORK/clip, and ours runs on them
    .venv/bin/python -m bench.compare_pipeline --work ../cmp --threads 1 \\
        --reference ../ref/Video-P2P --ref-python ../refvenv/bin/python \\
        --ref-bench ../shared/reference/ref_pipeline_bench.py --tokenizer ../shared/comfyui/comfy/sd1_tokenizer
    # again on a finished reference run (WORK/summary.json): only our side runs
    .venv/bin/python -m bench.compare_pipeline --work ../cmp --threads 1
    # the small world (the shipped model, a rendered clip), where reconstruction means something: the official code
    # cannot run it (it resizes every frame to 512 px), so the reference's algorithm is ours at its settings, which
    # makes the official loop's null embeddings (tests/test_core_pipeline.py, the reference-budget test)
    .venv/bin/python -m bench.compare_pipeline --world --threads 2

Per stage: seconds, UNet evaluations (clips: one prompt x one clip = 1; the reference's UNet samples over its
frames), backward passes, reconstruction PSNR of the source branch (latent: the reference's own formula, range of
x0 squared over the MSE; pixel: the decoded source branch against the clip, peak 1) and peak RSS. The whole path's
seconds are each side's in-process time after ``import torch``: the reference's tuning and editing processes
together, ours one process doing the same work (load, tune, invert, edit, decode; no files saved). Last line:

    whole null-text path: ratio R (ours X s, reference Y s), reconstruction ours A dB / reference B dB, peak RSS ratio M
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# the reference harness's run: configs/car-drive-tune.yaml and car-drive-p2p.yaml without blend_word
SOURCE = "a car is driving on the road"
TARGET = "a car is driving on the railway"
REWEIGHT = ("railway", "2")
PATHS = ("null_text", "fast")


def peak_rss_mib() -> float:
    """This process's peak RSS: the kernel's VmHWM, which starts afresh at exec (ru_maxrss would also count the
    parent's RSS at the fork)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0


def latent_psnr(rec, x0) -> float:
    """The reference harness's figure: (x0.max - x0.min)^2 over the MSE (pixels: vp2p_world.metrics.psnr, peak 1)."""
    mse = float((rec.float() - x0.float()).pow(2).mean())
    return 10 * math.log10(float(x0.max() - x0.min()) ** 2 / mse) if mse > 0 else float("inf")


def read_clip(folder: Path, frames: int):
    """The harness's clip: 1.jpg .. N.jpg, 512 px, as [F,H,W,3] in 0..1."""
    import numpy as np
    import torch
    from PIL import Image

    imgs = [np.asarray(Image.open(folder / f"{i + 1}.jpg").convert("RGB")) for i in range(frames)]
    return torch.from_numpy(np.stack(imgs)).float() / 255.0


# ------------------------------------------------------------------------------------------------ our side
def run_ours(a, path: str, settings: str) -> dict:
    """One whole edit in this process; ``settings``: 'defaults' or 'reference' (the reference's null-text budget)."""
    import torch

    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    from vp2p_core import pipeline
    from vp2p_core.options import EditOptions, InversionOptions, SamplerOptions, TuneOptions
    from vp2p_world import metrics

    inv_kw = dict(steps=a.steps, mode=path)
    if settings == "reference":
        inv_kw.update(inner_steps=10, lr_scale=1.0, early_stop=1e-5, early_stop_ratio=0.0)
    else:
        inv_kw.update(json.loads(a.inversion or "{}"))
    if a.world:
        from vp2p_world.render import Scene, render
        from vp2p_world.settings import WORLD_DEFAULTS

        weights = REPO_ROOT / "vp2p_world" / "weights"
        t0 = time.perf_counter()
        comps = pipeline.Components.from_folder(weights)
        clip = render(Scene(colour="red", shape="ball", background="green grass", path="bounce", seed=1))
        frames, source, target = clip.frames, clip.caption, clip.caption.replace("red", "blue")
        edit = EditOptions(**WORLD_DEFAULTS[EditOptions])
        tune = TuneOptions(steps=a.tune_steps, gradient_checkpointing=False)
    else:
        t0 = time.perf_counter()
        comps = pipeline.Components.from_folder(Path(a.work) / "tiny_sd")
        frames, source, target = read_clip(Path(a.work) / "clip", a.frames), SOURCE, TARGET
        edit = EditOptions(reweight_words=REWEIGHT[0], reweight_values=REWEIGHT[1])
        tune = TuneOptions(steps=a.tune_steps, gradient_checkpointing=a.grad_ckpt)
    load_s = time.perf_counter() - t0
    res = pipeline.run(comps, frames, source, target, tune=tune, inversion=InversionOptions(**inv_kw), edit=edit,
                       sampler=SamplerOptions())
    whole = time.perf_counter() - t_start
    st = res.inversion.stats
    tm, ev = res.timings, res.evaluations
    stages = {
        "load": dict(seconds=load_s + tm["encode"] + tm["plan"], evaluations=0, backwards=0),
        "tune": dict(seconds=tm.get("tune", 0.0), evaluations=ev.get("tune", 0), backwards=tune.steps),
        "ddim_inversion": dict(seconds=st["ddim_seconds"], evaluations=st["ddim_forwards"], backwards=0),
        "null_text": dict(seconds=st.get("null_text_seconds", 0.0),
                          evaluations=st["forwards"] - st["ddim_forwards"], backwards=st.get("null_backwards", 0)),
        "edit": dict(seconds=tm["edit"] + tm["decode"] + tm.get("decode_source", 0.0), evaluations=ev["edit"],
                     backwards=0),
    }
    # the first edit's; read before the benchmark's own encode of the clip (for the PSNR) and the re-edit below,
    # which holds a second result beside it
    peak = peak_rss_mib()
    x0 = comps.encode_frames(frames)
    old_word, new_word = ("blue", "yellow") if a.world else ("railway", "river")
    reedit = time_reedit(comps, res, source, target.replace(old_word, new_word),
                         replace(edit, reweight_words=new_word) if edit.reweight_words else edit)
    return dict(side="ours", path=path, settings=settings, whole_seconds=whole, stages=stages, reedit=reedit,
                latent_psnr=latent_psnr(res.edit.source, x0), pixel_psnr=metrics.psnr(res.source, frames),
                null_inner=st.get("inner_iterations"), threads=a.threads,
                peak_rss_mib=peak)


def time_reedit(comps, first, source: str, target: str, edit) -> dict:
    """A second edit of the same clip with another target, from the saved delta and inversion (what ComfyUI's cache
    or LoadVP2PDelta / LoadVP2PInversion give): read both files, prompts, edit, decode."""
    import tempfile

    from vp2p_core import Delta, Inversion, apply_delta, sample_edit

    with tempfile.TemporaryDirectory() as d:
        if first.delta is not None:  # None: the first edit ran no tuning (--tune-steps 0)
            first.delta.save(Path(d) / "delta.safetensors")
        first.inversion.save(Path(d) / "inversion.safetensors")
        e0, t0 = comps.model.evaluations(), time.perf_counter()
        if first.delta is not None:
            apply_delta(comps.model, Delta.load(Path(d) / "delta.safetensors"))
        inv = Inversion.load(Path(d) / "inversion.safetensors")
        plan = comps.plan(source, target, options=edit)
        res = sample_edit(comps.model, inv, plan)
        comps.decode_latents(res.edited.flatten(0, 1))
        return dict(seconds=time.perf_counter() - t0, evaluations=comps.model.evaluations() - e0)


def child(a) -> int:
    out = run_ours(a, a.child, a.settings)
    Path(a.child_out).write_text(json.dumps(out, indent=1))
    return 0


def spawn_ours(a, path: str, settings: str, work: Path) -> dict:
    out = work / f"ours_{settings}_{path}.json"
    cmd = [sys.executable, "-m", "bench.compare_pipeline", "--child", path, "--settings", settings,
           "--child-out", str(out), "--work", str(work), "--threads", str(a.threads), "--steps", str(a.steps),
           "--tune-steps", str(a.tune_steps), "--frames", str(a.frames)] + (["--world"] if a.world else []) + \
          (["--grad-ckpt"] if a.grad_ckpt else []) + \
          (["--inversion", a.inversion] if a.inversion else [])
    print(f"[compare] ours ({settings}, {path}) ...", flush=True)
    subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------------ reference side
def run_reference(a, work: Path) -> None:
    cmd = [a.ref_python, a.ref_bench, "--ref", a.reference, "--tokenizer", a.tokenizer, "--work", str(work),
           "--tune-steps", str(a.tune_steps), "--p2p-steps", str(a.steps), "--frames", str(a.frames),
           "--threads", str(a.threads)] + (["--grad-ckpt"] if a.grad_ckpt else [])
    print("[compare] reference: " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def adopt_reference_settings(p: argparse.ArgumentParser, a, work: Path) -> None:
    """Our side again on a finished reference run: take its frames, steps and threads where the command does not
    name them, and refuse a command that names others (the two sides would do different work)."""
    summary = work / "summary.json"
    if not summary.is_file():
        return
    s = json.loads(summary.read_text())
    recorded = {"frames": s.get("frames"), "steps": s.get("p2p_steps"), "tune_steps": s.get("tune_steps"),
                "threads": (s.get("env") or {}).get("threads")}
    for name, value in recorded.items():
        if value is None:
            continue
        given = getattr(a, name)
        if given is None:
            setattr(a, name, value)
        elif given != value:
            p.error(f"--{name.replace('_', '-')}: {given}, but the reference run in {work} used {value}; "
                    "expected the same (or leave the flag out)")


def reference_figures(work: Path) -> dict:
    """The reference harness's per-stage figures for the null-text and the fast path, in our stage names."""
    import torch

    s = json.loads((work / "summary.json").read_text())
    tune = s["stages"]["tune"]
    out = {}
    for path, key in (("null_text", "p2p_full"), ("fast", "p2p_fast")):
        p2p = s["stages"][key]
        ph = p2p["phases"]

        def fig(*names, src=ph):
            got = [src[n] for n in names if n in src]
            return dict(seconds=sum(g["seconds"] for g in got),
                        evaluations=sum(g.get("unet_samples", g.get("unet_calls", 0)) for g in got),
                        backwards=sum(g["backward_passes"] for g in got))
        tph = tune["phases"]
        stages = {"load": fig("load_prepare", "save_pipeline", src=tph), "tune": fig("train_loop", src=tph)}
        stages["load"] = {k: stages["load"][k] + fig("load", "save_gifs")[k] for k in stages["load"]}
        stages["ddim_inversion"] = fig("ddim_inversion")
        stages["null_text"] = fig("null_text", "between_inversion_and_edit")
        stages["edit"] = fig("edit")
        lat = torch.load(work / f"latents_{key}.pt", weights_only=True)
        x0 = lat["x0"][0].permute(1, 0, 2, 3)  # b c f h w -> f c h w
        rec = lat["final_latents"][0].permute(1, 0, 2, 3)
        out[path] = dict(side="reference", path=path, stages=stages,
                         whole_seconds=tune["wall_seconds"] + p2p["wall_seconds"],
                         latent_psnr=latent_psnr(rec, x0), pixel_psnr=None, rec_latents=rec,
                         peak_rss_mib=max(tune["process_peak_rss_mib"], p2p["process_peak_rss_mib"]),
                         threads=(s.get("env") or {}).get("threads"))
    return out


def reference_pixel_psnr(work: Path, frames: int, rec_latents) -> float:
    """Decode the reference's final source latents with the folder's VAE (tuning leaves the VAE alone)."""
    import torch
    from diffusers import AutoencoderKL

    from vp2p_world import metrics

    vae = AutoencoderKL.from_pretrained(work / "tiny_sd" / "vae", local_files_only=True).eval()
    with torch.no_grad():
        img = ((vae.decode(rec_latents / 0.18215).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    return metrics.psnr(img, read_clip(work / "clip", frames))


# ------------------------------------------------------------------------------------------------ report
STAGE_ROWS = ("load", "tune", "ddim_inversion", "null_text", "edit")


def table(ref: dict, ours: dict, title: str) -> list[str]:
    def r(x, y):
        return f"{x / y:.2f}x" if y else "-"
    lines = [f"### {title}", "",
             "| stage | reference s | ours s | ratio | reference evaluations | ours | reference backwards | ours |",
             "|---|---|---|---|---|---|---|---|"]
    for name in STAGE_ROWS:
        a, b = ref["stages"][name], ours["stages"][name]
        lines.append(f"| {name} | {a['seconds']:.2f} | {b['seconds']:.2f} | {r(a['seconds'], b['seconds'])} | "
                     f"{a['evaluations']} | {b['evaluations']} | {a['backwards']} | {b['backwards']} |")
    lines.append(f"| whole path | {ref['whole_seconds']:.2f} | {ours['whole_seconds']:.2f} | "
                 f"{r(ref['whole_seconds'], ours['whole_seconds'])} | "
                 f"{sum(s['evaluations'] for s in ref['stages'].values())} | "
                 f"{sum(s['evaluations'] for s in ours['stages'].values())} | "
                 f"{sum(s['backwards'] for s in ref['stages'].values())} | "
                 f"{sum(s['backwards'] for s in ours['stages'].values())} |")
    px = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines += ["", f"reconstruction of the source branch: latent PSNR reference {ref['latent_psnr']:.2f} dB, ours "
              f"{ours['latent_psnr']:.2f} dB; pixel PSNR reference {px(ref['pixel_psnr'])} dB, ours "
              f"{px(ours['pixel_psnr'])} dB",
              f"peak RSS: reference {ref['peak_rss_mib']:.0f} MiB, ours {ours['peak_rss_mib']:.0f} MiB "
              f"(ratio {ours['peak_rss_mib'] / ref['peak_rss_mib']:.2f})", ""]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=None, help="the reference harness's folder (tiny_sd/, clip/, summary.json)")
    p.add_argument("--reference", help="a clone of dvlab-research/Video-P2P: run the reference side first")
    p.add_argument("--ref-python", help="the reference environment's python")
    p.add_argument("--ref-bench", help="ref_pipeline_bench.py")
    p.add_argument("--tokenizer", help="folder with SD 1.5's CLIP vocab.json and merges.txt (reference side)")
    p.add_argument("--world", action="store_true", help="the small world: ours at the reference's settings against "
                   "ours at the defaults")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (tiny: 50, the reference's; world: 25)")
    p.add_argument("--tune-steps", type=int, default=None, help="tuning steps (tiny: 20; world: 60, the demo's)")
    p.add_argument("--frames", type=int, default=None, help="default 8 (or the finished reference run's)")
    p.add_argument("--threads", type=int, default=None, help="default 1 (or the finished reference run's)")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in tuning, both sides (a "
                   "finished reference run does not record it: give it again as that run had it)")
    p.add_argument("--paths", default=",".join(PATHS), help="null_text,fast")
    p.add_argument("--inversion", help='ours: InversionOptions other than the defaults, as JSON ({"inner_steps": 4})')
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--settings", default="defaults", choices=("defaults", "reference"), help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.world and (a.frames not in (None, 8) or a.grad_ckpt):
        p.error("--frames and --grad-ckpt: the small world's run is its rendered 8-frame clip without gradient "
                "checkpointing; leave them out with --world")
    if not a.world and not a.child and not a.reference and a.work:
        adopt_reference_settings(p, a, Path(a.work))
    a.frames = a.frames or 8
    a.threads = a.threads if a.threads is not None else 1
    a.steps = a.steps or (25 if a.world else 50)
    a.tune_steps = a.tune_steps if a.tune_steps is not None else (60 if a.world else 20)
    if a.inversion:
        try:
            extra = json.loads(a.inversion)
            from vp2p_core.options import InversionOptions

            InversionOptions(**extra)
        except (ValueError, TypeError) as e:  # VP2PInputError is a ValueError
            p.error(f"--inversion: expected InversionOptions fields as JSON, e.g. '{{\"inner_steps\": 4}}' ({e})")
    if a.child:
        return child(a)
    paths = [x for x in a.paths.split(",") if x]
    bad = [x for x in paths if x not in PATHS]
    if bad:
        p.error(f"--paths: expected names from {PATHS}, got {bad}")
    if a.world:
        work = Path(a.work or REPO_ROOT / "out" / "compare_world")
        work.mkdir(parents=True, exist_ok=True)
        ref = {path: spawn_ours(a, path, "reference", work) for path in paths}
        for r in ref.values():
            r["side"] = "ours at the reference's settings"
    else:
        if not a.work:
            p.error("--work: the reference harness's folder is required (or --world)")
        work = Path(a.work)
        if a.reference:
            missing = [n for n in ("ref_python", "ref_bench", "tokenizer") if not getattr(a, n)]
            if missing:
                p.error("--reference needs " + ", ".join("--" + n.replace("_", "-") for n in missing))
            run_reference(a, work)
        if not (work / "summary.json").is_file():
            p.error(f"--work: {work} holds no summary.json; run the reference side (--reference ...) first")
        ref = reference_figures(work)
        for path in paths:
            ref[path]["pixel_psnr"] = reference_pixel_psnr(work, a.frames, ref[path].pop("rec_latents"))
    ours = {path: spawn_ours(a, path, "defaults", work) for path in paths}
    where = "small world (shipped model, rendered clip)" if a.world else "tiny random SD-shaped model"
    lines = [f"{where}: {a.frames} frames, {a.steps} DDIM steps, {a.tune_steps} tuning steps, "
             f"{a.threads} thread(s)", ""]
    for path in paths:
        lines += table(ref[path], ours[path], f"{path} path")
    print("\n".join(lines))
    if a.json:
        Path(a.json).write_text(json.dumps({"reference": {k: {kk: vv for kk, vv in v.items() if kk != "rec_latents"}
                                                          for k, v in ref.items()}, "ours": ours}, indent=1))
    for path in paths:
        o = ours[path]
        print(f"re-edit after the {path} path (saved delta and inversion, another target): {o['reedit']['seconds']:.1f} s, "
              f"{o['reedit']['evaluations']} evaluations = 1/{o['whole_seconds'] / o['reedit']['seconds']:.1f} of the "
              "first edit's time")
    for path in sorted(paths, key=lambda x: x == "null_text"):  # the null-text line last
        r, o = ref[path], ours[path]
        name = "whole null-text path" if path == "null_text" else "whole fast path"
        print(f"{name}: ratio {r['whole_seconds'] / o['whole_seconds']:.2f} (ours {o['whole_seconds']:.1f} s, "
              f"reference {r['whole_seconds']:.1f} s), reconstruction ours {o['latent_psnr']:.2f} dB / reference "
              f"{r['latent_psnr']:.2f} dB, peak RSS ratio {o['peak_rss_mib'] / r['peak_rss_mib']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
