"""Memory of one context window at Stable Diffusion 1.5 size, measured on the CPU, for the estimate of long clips
on a GPU (BENCHMARKS.md, "Clips of any length").

    python -m bench.window_memory --rows 1,2,4 --resolution 512

Each case runs in a fresh process: an inflated UNet of SD 1.5's shapes (random weights, fp32), then one UNet call
on ``rows`` frames of one clip (``infer``: no gradients, as DDIM inversion and the edit; ``train``: forward and
backward of the tuning loss with gradient checkpointing, as OneShotTune runs by default; ``null_text``: forward and
backward to the unconditional embedding only, as null-text inversion; ``null_text_checkpointed``: the same with
gradient checkpointing, InversionOptions.null_text_checkpointing). Printed per case: the RSS after the weights are in
memory, the peak RSS of the call, their difference (the call's activations) and the call's seconds. The activations
grow linearly with the rows a call sees; the slope per row is what one window adds, whatever the clip's length,
since every stage holds the whole clip only as latents (4 x 64 x 64 per frame at 512 px).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def sd15_unet():
    """SD 1.5's UNet shapes (860M parameters), weights allocated without an init copy and filled in place."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    unet = unet.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.02, generator=g)
    return unet


MODES = ("infer", "train", "null_text", "null_text_checkpointed")


def one_case(rows: int, resolution: int, mode: str) -> dict:
    from vp2p_core import VideoModel, video_forward
    from vp2p_core.inflation import trainable_parameter_names

    torch.manual_seed(0)
    model = VideoModel.from_unet(sd15_unet())
    unet = model.unet
    h = resolution // 8
    x = torch.randn(rows, 4, h, h)
    null_text = mode.startswith("null_text")
    text = torch.randn(1, 77, 768, requires_grad=null_text)
    train = mode == "train"
    names = set(trainable_parameter_names(unet))
    for n, p in unet.named_parameters():
        p.requires_grad_(train and n in names)
    if train or mode == "null_text_checkpointed":
        unet.enable_gradient_checkpointing()
    if train:
        unet.train()
    before = rss_mib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if mode != "infer":
        out = video_forward(unet, x, torch.tensor([500]), text, rows)
        out.float().pow(2).mean().backward()
    else:
        with torch.no_grad():
            video_forward(unet, x, 500, text, rows)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in unet.parameters())
    return {"rows": rows, "resolution": resolution, "mode": mode, "parameters": params,
            "rss_weights_mib": round(before, 1), "peak_mib": round(peak, 1),
            "peak_before_call_mib": round(peak_before, 1), "call_mib": round(peak - max(before, 0.0), 1),
            "seconds": round(seconds, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="1,2,4", help="frames per UNet call, comma-separated")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--modes", default=",".join(MODES), help=f"some of {', '.join(MODES)}")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.one:
        rows, mode = a.one.split(":")
        print(json.dumps(one_case(int(rows), a.resolution, mode)))
        return 0
    modes = [m for m in a.modes.split(",") if m]
    if not set(modes) <= set(MODES):
        p.exit(2, f"{p.prog}: error: --modes: expected some of {', '.join(MODES)}, got {a.modes!r}\n")
    results = []
    for mode in modes:
        for rows in [int(v) for v in a.rows.split(",")]:
            r = subprocess.run([sys.executable, "-m", "bench.window_memory", "--one",
                                f"{rows}:{mode}", "--resolution", str(a.resolution),
                                "--threads", str(a.threads)], capture_output=True, text=True)
            if r.returncode:
                sys.stderr.write(r.stderr[-3000:])
                return r.returncode
            results.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    for mode in modes:
        rs = [r for r in results if r["mode"] == mode]
        if len(rs) >= 2:
            slope = (rs[-1]["call_mib"] - rs[0]["call_mib"]) / (rs[-1]["rows"] - rs[0]["rows"])
            print(f"{mode}: {slope:.0f} MiB per frame of a call (fp32), "
                  f"{rs[0]['call_mib'] - slope * rs[0]['rows']:.0f} MiB fixed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
