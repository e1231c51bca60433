"""Peak memory of two steps outside the UNet loop: loading a single-file checkpoint, and the composite's guided
filter (``refine_radius``).

    python -m bench.peak_memory --what single_file     # an SD-shaped 603M-parameter fp32 UNet, written to a temp file
    python -m bench.peak_memory --what refine --frames 8 --size 512

Each measurement runs in a fresh process: its peak RSS (``VmHWM``: ``ru_maxrss`` would carry the RSS of the
process that started it across the exec) after the step, minus that after the imports and the step's inputs; so it
is what the step itself added at its worst moment. A checkpoint's weights that are
mapped from the file and not yet read do not count (the pages are read as the weights are used).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_checkpoint(path: Path) -> int:
    """An SD 1.x-layout checkpoint with a 603M-parameter UNet (SD 1.5's channels on three levels), a tiny VAE and
    text encoder, in fp32; returns the UNet's parameter count."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from test_checkpoint import VOCAB, clip_to_ldm, unet_to_ldm, vae_to_ldm
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, block_out_channels=(320, 640, 1280), layers_per_block=2,
                                cross_attention_dim=64, down_block_types=("CrossAttnDownBlock2D",) * 3,
                                up_block_types=("CrossAttnUpBlock2D",) * 3, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                        norm_num_groups=32, sample_size=32)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=1, vocab_size=VOCAB, max_position_embeddings=77,
                                      hidden_act="quick_gelu"))
    sd = {**unet_to_ldm(unet), **vae_to_ldm(vae), **clip_to_ldm(te)}
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(path))
    return sum(p.numel() for p in unet.parameters())


CHILD = {
    "single_file": """
import sys
import diffusers, transformers, torch
from vp2p_core.checkpoint import load_single_file
before = peak()
load_single_file(sys.argv[1])
""",
    "refine": """
import sys, torch
torch.set_num_threads(1)
from vp2p_core.composite import refine_mask
f, s = int(sys.argv[1]), int(sys.argv[2])
g = torch.Generator().manual_seed(0)
mask = (torch.rand(f, s, s, generator=g) > 0.5).float()
guides = (torch.rand(f, s, s, 3, generator=g), torch.rand(f, s, s, 3, generator=g))
before = peak()
refine_mask(mask, guides, 8)
""",
}
PEAK = """
def peak():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
"""
REPORT = "\nprint((peak() - before) / 1024)\n"


def measure(what: str, args: list[str]) -> float:
    """MiB the step added to its fresh process's peak."""
    out = subprocess.run([sys.executable, "-c", PEAK + CHILD[what] + REPORT, *args], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", choices=sorted(CHILD), required=True)
    p.add_argument("--frames", type=int, default=8, help="refine: frames at once")
    p.add_argument("--size", type=int, default=512, help="refine: frame side in pixels")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    if a.frames < 1 or a.size < 8 or a.repeats < 1:
        p.error("--frames, --repeats: at least 1; --size: at least 8")
    with tempfile.TemporaryDirectory() as d:
        if a.what == "single_file":
            path = Path(d) / "checkpoint.safetensors"
            params = write_checkpoint(path)
            size = path.stat().st_size / 2 ** 30
            args, label = [str(path)], f"UNet of {params / 1e6:.0f}M parameters, fp32 (file {size:.2f} GiB)"
        else:
            args, label = [str(a.frames), str(a.size)], f"{a.frames} frames at {a.size} px, radius 8"
        peaks = [measure(a.what, args) for _ in range(a.repeats)]
    print(json.dumps({"what": a.what, "case": label, "peak_mib": [round(v, 1) for v in peaks]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
