"""Per-stage CPU benchmark of vp2p_core: wall time, UNet evaluations and peak memory per stage.

    python -m bench.core_bench --config tiny
    python -m bench.core_bench --config small
    python -m bench.core_bench --config tiny --pretune 50      # stages run on a briefly tuned model

Stages: inflate, tune (per step), DDIM inversion, null-text optimisation, edit (after null-text
inversion) and edit (after fast inversion). Every stage runs in a fresh subprocess that first rebuilds
what it needs (the model from a fixed seed; the tuned delta and the inversions from safetensors files
written by earlier stages), then resets the kernel's peak-RSS mark (``/proc/self/clear_refs`` = 5) and
reads ``VmHWM`` after the stage: "peak RSS" is that high-water mark minus the RSS at the stage's start,
i.e. what the stage itself added at its worst moment (torch's CPU allocations included; tracemalloc would
not see them). Where clear_refs is not writable, ``ru_maxrss`` after minus RSS before is used (an upper
bound then, if building the prerequisites peaked higher).

Evaluations are counted by the model (``state.forward_clips``: one prompt x one clip = 1). Backward
passes: tuning 1 per step, null-text ``stats['null_backwards']``. The reference's cost for the same work
comes from the official code's accounting (docs/ARCHITECTURE.md): tuning 1 forward + 1 backward per step; DDIM inversion 1 forward per
step; null-text per step 1 conditional forward + k x (forward + backward) + 2 forwards for the guided step,
where k is the number of loss evaluations we made at that step (the reference steps before it tests the
loss, so it stops at the same evaluation with one more Adam step; a step that ran out is 10 pairs);
editing 4 forwards per step (source/target x unconditional/conditional).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

CONFIGS = {
    # vp2p_world/tiny.py's UNet: (32, 64), 1 layer per block, cross dim 32, 2 heads
    "tiny": dict(unet=None, cross_dim=32, frames=8, size=16, tune_steps=20, inversion_steps=50),
    # 3 cross-attention levels, 2 layers per block, 8 heads; inversion with fewer DDIM steps to keep
    # the null-text stage to a few minutes on 2 CPU cores (all per-step costs scale linearly)
    "small": dict(unet=dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
                            block_out_channels=(64, 128, 256),
                            down_block_types=("CrossAttnDownBlock2D",) * 3,
                            up_block_types=("CrossAttnUpBlock2D",) * 3,
                            cross_attention_dim=128, attention_head_dim=8, norm_num_groups=32),
                  cross_dim=128, frames=8, size=32, tune_steps=3, inversion_steps=10),
}

SOURCE = "a rabbit is jumping on the grass"
TARGET = "a cat is jumping on the grass"
BLEND = ("rabbit", "cat")
REF_TUNE_STEPS, REF_INNER = 500, 10


# ----------------------------------------------------------------------------------------- memory
def _rss_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _hwm_kb() -> int | None:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


class PeakRSS:
    """Peak RSS added by a block: reset the high-water mark at entry where the kernel allows it."""

    def __enter__(self):
        self.start = _rss_kb()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.method = "VmHWM after clear_refs=5"
        except OSError:
            self.method = "ru_maxrss"
        return self

    def __exit__(self, *exc):
        peak = _hwm_kb() if self.method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak_mb = max(0, peak - self.start) / 1024
        self.start_mb = self.start / 1024
        return False


# ----------------------------------------------------------------------------------------- stages
def _build(cfg: dict, workdir: str, tuned: bool):
    from vp2p_core import VideoModel
    from vp2p_core.tuning import Delta, apply_delta

    unet = _unet2d(cfg)
    model = VideoModel.from_unet(unet)
    if tuned:
        apply_delta(model, Delta.load(os.path.join(workdir, "delta.safetensors")))
    return model


def _unet2d(cfg: dict):
    if cfg["unet"] is None:
        from vp2p_world.tiny import tiny_unet
        return tiny_unet(seed=0, cross_dim=cfg["cross_dim"])
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    return UNet2DConditionModel(**cfg["unet"]).eval()


def _clip(cfg: dict) -> torch.Tensor:
    """A seeded 'moving' clip of latents: one random field shifted one pixel per frame, plus a little noise."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(1, 4, cfg["size"], cfg["size"], generator=g)
    frames = [torch.roll(base, shifts=i, dims=-1) for i in range(cfg["frames"])]
    return torch.cat(frames) + 0.05 * torch.randn(cfg["frames"], 4, cfg["size"], cfg["size"], generator=g)


def _texts(cfg: dict):
    from vp2p_world.tiny import ToyTokenizer, toy_embed
    tok = ToyTokenizer()
    d = cfg["cross_dim"]
    return tok, toy_embed(tok, [SOURCE], d), toy_embed(tok, [TARGET], d), toy_embed(tok, [""], d)


def stage(name: str, cfg: dict, workdir: str, tuned: bool, steps: int) -> dict:
    from vp2p_core import (EditOptions, Host, InversionOptions, TuneOptions, build_edit_plan, invert, one_shot_tune,
                           sample_edit)
    from vp2p_core.inversion import Inversion

    torch.manual_seed(0)
    latents = _clip(cfg)
    tok, src, tgt, empty = _texts(cfg)
    row: dict = {"stage": name}
    if name == "inflate":
        unet = _unet2d(cfg)
        from vp2p_core import VideoModel
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            model = VideoModel.from_unet(unet)
            row["time_s"] = time.perf_counter() - t0
        row.update(forwards=0, backwards=0, ref_forwards=0, ref_backwards=0)
    else:
        model = _build(cfg, workdir, tuned)
        ev0 = model.evaluations()
        if name in ("tune", "pretune"):
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                delta = one_shot_tune(model, latents=latents, text=src, prompt=SOURCE,
                                      options=TuneOptions(steps=steps, gradient_checkpointing=False))
                row["time_s"] = time.perf_counter() - t0
            row.update(steps=steps, per_step_s=row["time_s"] / steps, backwards=steps,
                       ref_forwards=steps, ref_backwards=steps,
                       loss_first=delta.losses[0], loss_last=delta.losses[-1])
            if name == "pretune":
                delta.save(os.path.join(workdir, "delta.safetensors"))
        elif name == "ddim":
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                inv = invert(model, latents, source_embedding=src, empty_embedding=empty, prompt=SOURCE,
                             options=InversionOptions(mode="fast", steps=steps))
                row["time_s"] = time.perf_counter() - t0
            inv.save(os.path.join(workdir, "inv_fast.safetensors"))
            row.update(steps=steps, backwards=0, ref_forwards=steps, ref_backwards=0)
        elif name == "null_text":
            from vp2p_core.inversion import ddim_inversion, null_text_optimisation
            from vp2p_core.schedule import DDIMSchedule
            # DDIM part first (untimed here: its own stage), then the optimisation alone
            schedule = DDIMSchedule(model.schedule, steps)
            with torch.no_grad():
                ddim = ddim_inversion(model, latents, src, schedule)
            ev0 = model.evaluations()
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                # the reference's settings: its 10 iterations at its rate, and its own stop (not ours by ratio)
                options = InversionOptions(steps=steps, inner_steps=REF_INNER, lr_scale=1.0, early_stop_ratio=0.0)
                nulls, traj, st = null_text_optimisation(model, ddim, cond=src, empty=empty, schedule=schedule, options=options,
                                                         host=Host())
                row["time_s"] = time.perf_counter() - t0
            inv = Inversion(x_T=ddim[-1], source_embedding=src, timesteps=schedule.timesteps.clone(),
                            mode="null_text", guidance=options.guidance, prompt=SOURCE, model_fingerprint=model.fingerprint,
                            schedule=model.schedule, null_embeddings=nulls, trajectory=traj, stats=st)
            inv.save(os.path.join(workdir, "inv_null.safetensors"))
            k = st["inner_iterations"]
            row.update(steps=steps, backwards=st["null_backwards"], inner_iterations=k,
                       early_stopped=sum(1 for i in k if i < REF_INNER), final_loss=st["losses"][-1],
                       ref_forwards=sum(1 + i + 2 for i in k), ref_backwards=sum(k))
        elif name in ("edit_null", "edit_fast"):
            inv = Inversion.load(os.path.join(workdir, "inv_null.safetensors" if name == "edit_null" else
                                              "inv_fast.safetensors"))
            plan = build_edit_plan(tok, source_prompt=SOURCE, target_prompts=TARGET,
                                   options=EditOptions(blend_words=BLEND[0], blend_target_words=BLEND[1]))
            plan.source_embedding, plan.target_embeddings, plan.empty_embedding = src, tgt, empty
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                res = sample_edit(model, inv, plan)
                row["time_s"] = time.perf_counter() - t0
            steps = inv.num_steps
            row.update(steps=steps, backwards=0, ref_forwards=4 * steps, ref_backwards=0,
                       reported_forwards=res.stats["forwards"])
        else:
            raise SystemExit(f"unknown stage {name!r}")
        row["forwards"] = model.evaluations() - ev0
    row.update(peak_rss_mb=mem.peak_mb, rss_at_start_mb=mem.start_mb, memory_method=mem.method)
    return row


# ----------------------------------------------------------------------------------------- driver
LABELS = {"inflate": "inflate", "tune": "tune (per step)", "ddim": "DDIM inversion",
          "null_text": "null-text optimisation", "edit_null": "edit (null-text inversion)",
          "edit_fast": "edit (fast inversion)"}


def run_all(config: str, pretune: int, tune_steps: int, inv_steps: int, threads: int) -> list[dict]:
    cfg = CONFIGS[config]
    rows = []
    with tempfile.TemporaryDirectory(prefix="vp2p_bench_") as wd:
        plan = [("pretune", pretune)] if pretune else []
        plan += [("inflate", 0), ("tune", tune_steps), ("ddim", inv_steps), ("null_text", inv_steps),
                 ("edit_null", inv_steps), ("edit_fast", inv_steps)]
        for name, steps in plan:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                       PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
            cmd = [sys.executable, "-m", "bench.core_bench", "--config", config, "--stage", name, "--workdir", wd,
                   "--steps", str(steps), "--threads", str(threads)] + (["--tuned"] if pretune and name != "pretune" else [])
            r = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(f"stage {name} failed:\n{r.stderr[-4000:]}")
            row = json.loads(r.stdout.strip().splitlines()[-1])
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| stage | steps | wall time (s) | per step (s) | forwards (clips) | backwards | peak RSS added (MB) "
           "| reference forwards | reference backwards |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["stage"] == "pretune":
            continue
        steps = r.get("steps", 0)
        per = f"{r['time_s'] / steps:.3f}" if steps else "-"
        out.append(f"| {LABELS[r['stage']]} | {steps or '-'} | {r['time_s']:.2f} | {per} | {r['forwards']} "
                   f"| {r['backwards']} | {r['peak_rss_mb']:.0f} | {r['ref_forwards']} | {r['ref_backwards']} |")
    return "\n".join(out)


def notes(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        if r["stage"] == "pretune":
            lines.append(f"- pre-tuned {r['steps']} steps (loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}, "
                         f"{r['time_s']:.1f} s) before the other stages")
        if r["stage"] == "tune":
            lines.append(f"- tune: loss {r['loss_first']:.4f} -> {r['loss_last']:.4f} over {r['steps']} steps; "
                         f"the reference's 500 steps = 500 forwards + 500 backwards "
                         f"(~{500 * r['per_step_s']:.0f} s at this per-step time)")
        if r["stage"] == "null_text":
            k = r["inner_iterations"]
            lines.append(f"- null-text: loss evaluations per step {k}; {r['early_stopped']} of {len(k)} steps "
                         f"stopped early; final loss {r['final_loss']:.3g}")
    if rows:
        lines.append(f"- memory: {rows[-1]['memory_method']}, minus RSS at the stage's start, fresh process per stage")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--pretune", type=int, default=0, help="tune this many steps first; later stages use that model")
    ap.add_argument("--tune-steps", type=int, default=0, help="steps timed in the tune stage (0: config's)")
    ap.add_argument("--inversion-steps", type=int, default=0, help="DDIM steps (0: config's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = CONFIGS[a.config]
    if a.stage:
        print(json.dumps(stage(a.stage, cfg, a.workdir, a.tuned, a.steps)))
        return
    rows = run_all(a.config, a.pretune, a.tune_steps or cfg["tune_steps"],
                   a.inversion_steps or cfg["inversion_steps"], a.threads)
    print(markdown(rows))
    print(notes(rows))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
