"""Side-by-side check of our inflated UNet against the Video-P2P reference's UNet3DConditionModel.

Two processes, two environments, tensors exchanged through safetensors files in a temp dir:

- ``ours``: this project's venv (torch 2.13, diffusers 0.42). Builds a diffusers UNet2DConditionModel
  from a small SD-shaped config with a fixed seed, inflates it with ``VideoModel.from_unet``, gives the
  temporal attention random non-zero weights (the output projection and LayerNorm too, so the temporal
  path really contributes), writes weights + inputs, runs one forward and one tuning step.
- ``reference``: the reference's own environment (torch 2.13, diffusers 0.11.1; run with
  ``--ref-python``), ``tuneavideo.models.unet.UNet3DConditionModel`` from ``--reference`` loads the same
  state dict (strict) and runs the same work on the 5-D latents [b, c, f, h, w].

Compared: the UNet output and the gradients of the trainable set (attn1.to_q, attn2.to_q, attn_temp)
for the same loss. Timed, single thread, best of N, each side alone in its process: one forward pass
(no grad) and one tuning step (forward + noise-MSE + backward + grad-clip + AdamW on the trainable set).
Also timed, as each implementation does it: one null-text inner iteration (forward with a trainable
text embedding, MSE, backward, Adam step on the embedding); ours freezes the UNet, the reference's
run_videop2p.py leaves every UNet weight requiring grad (timed that way, and frozen for comparison).
The reference's diffusers-0.11 attention materialises every attention map; ours calls SDPA.

    .venv/bin/python -m bench.compare_reference --reference ../ref/Video-P2P \
        --ref-python ../refvenv/bin/python --configs small sd15_narrow

(from the repository; those two paths, beside the repository, are also the defaults).

Nothing of the reference is copied here; it is imported from its checkout in the subprocess only.
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
# defaults: the reference's checkout and environment beside this repository
DEFAULT_REFERENCE = os.path.join(os.path.dirname(REPO_ROOT), "ref", "Video-P2P")
DEFAULT_REF_PYTHON = os.path.join(os.path.dirname(REPO_ROOT), "refvenv", "bin", "python")

# Small SD-1.x-shaped configs (diffusers 2D block names; the reference side maps them to its 3D names).
CONFIGS = {
    # 2 cross-attention down blocks + a plain one, 2 layers per block, 8 heads
    "small": dict(
        unet=dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=2,
                  block_out_channels=(32, 64, 64),
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16),
        frames=8, size=16, repeats=5),
    # SD 1.5's layout (3 cross-attention down blocks + plain, 2 layers, 8 heads, 32 groups) at 1/5 width,
    # cross-attention width 768 as SD 1.5, 32x32 latents (a 256 px clip)
    "sd15_narrow": dict(
        unet=dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
                  block_out_channels=(64, 128, 256, 256),
                  down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                    "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32),
        frames=8, size=32, repeats=3),
}

TRAINABLE_SUFFIXES = ("attn1.to_q", "attn2.to_q", "attn_temp")
TIMESTEP = 500
LR = 3e-5


def _save(tensors: dict, path: str) -> None:
    from safetensors.torch import save_file
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path)


def _load(path: str) -> dict:
    from safetensors.torch import load_file
    return load_file(path)


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    out = {}
    for mname, module in model.named_modules():
        if mname.endswith(TRAINABLE_SUFFIXES):
            for pname, p in module.named_parameters():
                out[f"{mname}.{pname}"] = p
    return out


def _timed_work(forward, model, noise, repeats: int) -> tuple[dict, dict, float, float]:
    """Gradients of one loss (for comparison), then best-of-N forward and tuning-step times."""
    params = dict(model.named_parameters())
    train = _trainable(model)
    for n, p in params.items():
        p.requires_grad_(n in train)
    model.train()
    loss = torch.nn.functional.mse_loss(forward(), noise)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in train.items()}
    for p in train.values():
        p.grad = None
    model.eval()

    def fwd():
        with torch.no_grad():
            forward()

    t_fwd = _best(fwd, repeats)
    model.train()
    opt = torch.optim.AdamW(list(train.values()), lr=LR, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

    def step():
        out = forward()
        l = torch.nn.functional.mse_loss(out.float(), noise)
        l.backward()
        torch.nn.utils.clip_grad_norm_(list(train.values()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t_step = _best(step, repeats)
    return {"loss": float(loss)}, grads, t_fwd, t_step


def _null_iteration(forward_text, model, text, target, unet_grads: bool, repeats: int) -> float:
    """One null-text inner iteration: forward with a trainable embedding, MSE, backward, Adam step on it.
    ``unet_grads``: the UNet's weights require grad too (the reference's run_videop2p.py never freezes them,
    and never clears their .grad either)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(unet_grads)
        p.grad = None
    e = text.clone().requires_grad_(True)
    opt = torch.optim.Adam([e], lr=1e-2)

    def it():
        loss = torch.nn.functional.mse_loss(forward_text(e), target)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t = _best(it, repeats)
    for p in model.parameters():
        p.grad = None
    return t


def side_ours(d: str, name: str, repeats: int) -> None:
    from diffusers import UNet2DConditionModel

    sys.path.insert(0, REPO_ROOT)
    from vp2p_core import VideoModel
    from vp2p_core.inflation import video_forward

    cfg = CONFIGS[name]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg["unet"]).eval()
    model = VideoModel.from_unet(unet, group_norm="clip")  # the reference normalises the 5-D tensor
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if ".attn_temp.to_out." in n:
                bound = 1.0 / p.shape[-1] ** 0.5 if p.dim() == 2 else 0.05
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=g))
            elif ".norm_temp.weight" in n:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif ".norm_temp.bias" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    f, s = cfg["frames"], cfg["size"]
    sample5 = torch.randn(1, 4, f, s, s, generator=g)
    text = torch.randn(1, 77, cfg["unet"]["cross_attention_dim"], generator=g)
    noise5 = torch.randn(1, 4, f, s, s, generator=g)
    t = torch.tensor(TIMESTEP)
    _save(unet.state_dict(), os.path.join(d, "weights.safetensors"))
    _save({"sample": sample5, "text": text, "noise": noise5, "t": t}, os.path.join(d, "inputs.safetensors"))

    sample = sample5[0].transpose(0, 1).contiguous()  # [F,C,h,w]
    noise = noise5[0].transpose(0, 1).contiguous()

    def forward():
        return video_forward(unet, sample, t, text, num_frames=f)

    with torch.no_grad():
        out = forward()
        # the temporal path's share of the output: same call with the temporal output projections zeroed
        saved = {n: p.clone() for n, p in unet.named_parameters() if ".attn_temp.to_out." in n}
        for n, p in unet.named_parameters():
            if n in saved:
                p.zero_()
        out_no_temp = forward()
        for n, p in unet.named_parameters():
            if n in saved:
                p.copy_(saved[n])
    info, grads, t_fwd, t_step = _timed_work(forward, unet, noise, repeats)
    info["null_iter_s"] = _null_iteration(lambda e: video_forward(unet, sample, t, e, num_frames=f), unet, text,
                                          noise, False, repeats)
    _save({"out": out.transpose(0, 1).unsqueeze(0), "out_no_temp": out_no_temp.transpose(0, 1).unsqueeze(0)},
          os.path.join(d, "ours_out.safetensors"))
    _save(grads, os.path.join(d, "ours_grads.safetensors"))
    info.update(forward_s=t_fwd, step_s=t_step, maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                params=sum(p.numel() for p in unet.parameters()), trainable=sum(p.numel() for p in _trainable(unet).values()),
                torch=torch.__version__, diffusers=__import__("diffusers").__version__)
    with open(os.path.join(d, "ours.json"), "w") as fh:
        json.dump(info, fh)


def side_reference(d: str, name: str, repeats: int, reference: str) -> None:
    sys.path.insert(0, reference)
    from tuneavideo.models.unet import UNet3DConditionModel

    cfg = dict(CONFIGS[name]["unet"])
    cfg["down_block_types"] = tuple(b.replace("2D", "3D") for b in cfg["down_block_types"])
    cfg["up_block_types"] = tuple(b.replace("2D", "3D") for b in cfg["up_block_types"])
    unet = UNet3DConditionModel(**cfg)
    sd = _load(os.path.join(d, "weights.safetensors"))
    missing, unexpected = unet.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise SystemExit(f"reference: state dict mismatch: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {unexpected[:5]} ({len(unexpected)})")
    unet.eval()
    inp = _load(os.path.join(d, "inputs.safetensors"))
    sample, text, noise, t = inp["sample"], inp["text"], inp["noise"], inp["t"]

    def forward():
        return unet(sample, t, encoder_hidden_states=text).sample

    with torch.no_grad():
        out = forward()
    info, grads, t_fwd, t_step = _timed_work(forward, unet, noise, repeats)
    fwd_text = lambda e: unet(sample, t, encoder_hidden_states=e).sample  # noqa: E731
    info["null_iter_s"] = _null_iteration(fwd_text, unet, text, noise, True, repeats)
    info["null_iter_frozen_s"] = _null_iteration(fwd_text, unet, text, noise, False, repeats)
    _save({"out": out}, os.path.join(d, "ref_out.safetensors"))
    _save(grads, os.path.join(d, "ref_grads.safetensors"))
    info.update(forward_s=t_fwd, step_s=t_step, maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                keys=len(sd), torch=torch.__version__, diffusers=__import__("diffusers").__version__)
    with open(os.path.join(d, "ref.json"), "w") as fh:
        json.dump(info, fh)


def _run_side(python: str, side: str, d: str, name: str, repeats: int, reference: str, threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=REPO_ROOT if side == "ours" else reference)
    cmd = [python, os.path.abspath(__file__), "--side", side, "--dir", d, "--configs", name,
           "--repeats", str(repeats), "--reference", reference, "--threads", str(threads)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{side} side failed ({r.returncode}):\n{r.stderr[-4000:]}")


def compare(name: str, reference: str, ref_python: str, repeats: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="vp2p_cmp_") as d:
        _run_side(sys.executable, "ours", d, name, repeats, reference, threads)
        _run_side(ref_python, "reference", d, name, repeats, reference, threads)
        ours, ref = json.load(open(os.path.join(d, "ours.json"))), json.load(open(os.path.join(d, "ref.json")))
        o, r = _load(os.path.join(d, "ours_out.safetensors")), _load(os.path.join(d, "ref_out.safetensors"))
        go, gr = _load(os.path.join(d, "ours_grads.safetensors")), _load(os.path.join(d, "ref_grads.safetensors"))
    out, ref_out = o["out"].double(), r["out"].double()
    diff = (out - ref_out).abs().max().item()
    scale = ref_out.abs().max().item()
    temporal = (out - o["out_no_temp"].double()).abs().max().item()
    if set(go) != set(gr):
        raise SystemExit(f"trainable sets differ: ours-only {sorted(set(go) - set(gr))[:5]}, "
                         f"reference-only {sorted(set(gr) - set(go))[:5]}")
    grad_rel = max(((go[k].double() - gr[k].double()).abs().max() / gr[k].double().abs().max().clamp_min(1e-30)).item()
                   for k in go)
    cfg = CONFIGS[name]
    return dict(config=name, frames=cfg["frames"], latent=cfg["size"], params=ours["params"], trainable=ours["trainable"],
                max_abs_diff=diff, max_abs_out=scale, rel_diff=diff / scale, temporal_effect=temporal,
                grad_max_rel_diff=grad_rel, grads_compared=len(go),
                ours_forward_s=ours["forward_s"], ref_forward_s=ref["forward_s"],
                ours_step_s=ours["step_s"], ref_step_s=ref["step_s"],
                forward_ratio=ref["forward_s"] / ours["forward_s"], step_ratio=ref["step_s"] / ours["step_s"],
                ours_null_iter_s=ours["null_iter_s"], ref_null_iter_s=ref["null_iter_s"],
                ref_null_iter_frozen_s=ref["null_iter_frozen_s"],
                null_iter_ratio=ref["null_iter_s"] / ours["null_iter_s"],
                ours_maxrss_mb=ours["maxrss_mb"], ref_maxrss_mb=ref["maxrss_mb"],
                ours_versions=f"torch {ours['torch']}, diffusers {ours['diffusers']}",
                ref_versions=f"torch {ref['torch']}, diffusers {ref['diffusers']}")


def markdown(rows: list[dict]) -> str:
    lines = ["| config | frames x latent | params | max abs diff | max abs out | rel diff | temporal effect "
             "| grad rel diff | fwd ours / ref (s) | fwd ratio ref/ours | tune step ours / ref (s) | step ratio ref/ours "
             "| null-text iteration ours / ref / ref with UNet frozen (s) | ratio ref/ours | peak RSS ours / ref (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['frames']} x {r['latent']}x{r['latent']} | {r['params'] / 1e6:.2f} M "
            f"({r['trainable'] / 1e6:.2f} M trainable) | {r['max_abs_diff']:.2e} | {r['max_abs_out']:.3g} "
            f"| {r['rel_diff']:.1e} | {r['temporal_effect']:.3g} | {r['grad_max_rel_diff']:.1e} "
            f"| {r['ours_forward_s']:.3f} / {r['ref_forward_s']:.3f} | {r['forward_ratio']:.2f} "
            f"| {r['ours_step_s']:.3f} / {r['ref_step_s']:.3f} | {r['step_ratio']:.2f} "
            f"| {r['ours_null_iter_s']:.3f} / {r['ref_null_iter_s']:.3f} / {r['ref_null_iter_frozen_s']:.3f} "
            f"| {r['null_iter_ratio']:.2f} | {r['ours_maxrss_mb']:.0f} / {r['ref_maxrss_mb']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default=DEFAULT_REFERENCE,
                    help="checkout of dvlab-research/Video-P2P (default: ../ref/Video-P2P beside the repository)")
    ap.add_argument("--ref-python", default=DEFAULT_REF_PYTHON,
                    help="python of the reference's environment, diffusers 0.11.1 "
                         "(default: ../refvenv/bin/python beside the repository)")
    ap.add_argument("--configs", nargs="+", default=["small"], choices=sorted(CONFIGS))
    ap.add_argument("--repeats", type=int, default=0, help="timed repetitions (best of N); 0: the config's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--side", choices=("ours", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.side:
        name = a.configs[0]
        repeats = a.repeats or CONFIGS[name]["repeats"]
        torch.manual_seed(0)
        if a.side == "ours":
            side_ours(a.dir, name, repeats)
        else:
            side_reference(a.dir, name, repeats, a.reference)
        return
    if not os.path.isdir(os.path.join(a.reference, "tuneavideo")):
        raise SystemExit(f"--reference: {a.reference} has no tuneavideo/ package (a Video-P2P checkout expected)")
    rows = []
    for name in a.configs:
        rows.append(compare(name, a.reference, a.ref_python, a.repeats or CONFIGS[name]["repeats"], a.threads))
        print(json.dumps(rows[-1]), flush=True)
    print(markdown(rows))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
