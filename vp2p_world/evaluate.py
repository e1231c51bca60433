"""Does the shipped tiny model follow prompts? Sample images for random captions and measure them.

    python -m vp2p_world.evaluate                       # 100 images, DDIM 50 steps, guidance 7.5
    python -m vp2p_world.evaluate --n 40 --steps 20 --grid out/samples.png

Why: the edit benchmark is only meaningful if the model generates what a prompt names (an edit to
"blue" can only succeed if the model knows "blue"). Each sample is classified without any truth
clip: the background is the image's median colour, the object is the largest connected region far
from it; colour = nearest world hue of the object's mean colour (as in ``metrics``), shape = best
IoU against the renderer's shapes fitted to the region's area and centroid, background = nearest
mean colour of the world's background plates. The same classifier is run on rendered frames of the
same captions (``truth`` figures) to show how far the measurement itself can be trusted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vp2p_core import InversionOptions, SamplerOptions
from vp2p_core.errors import VP2PInputError
from vp2p_core.files import atomic_write, atomic_write_text, check_writable

from .metrics import MIN_OBJECT_PIXELS, OBJECT_DISTANCE, classify_shape, largest_component, nearest_colour
from .render import BACKGROUNDS, COLOURS, SHAPES, Scene, caption, random_scene, render, render_background

log = logging.getLogger("vp2p_world.evaluate")
WEIGHTS = Path(__file__).resolve().parent / "weights"


# ----------------------------------------------------------------------------------------------
# the model


def load_model(folder: str | Path = WEIGHTS) -> dict:
    """Tokenizer, text encoder, UNet (the image UNet, not inflated), VAE and diffusers' DDIM scheduler of a diffusers
    SD folder, offline, computing in float32 whatever dtype the weights were stored in (the core's load_folder)."""
    from diffusers import DDIMScheduler

    from vp2p_core.pipeline import load_folder

    folder = Path(folder)
    if not (folder / "unet").is_dir():
        raise FileNotFoundError(f"model folder {str(folder)!r} has no unet/ (train it: python -m vp2p_world.train)")
    m = load_folder(folder)
    return {"tokenizer": m.tokenizer, "text_encoder": m.text_encoder, "unet": m.unet, "vae": m.vae,
            "scheduler": DDIMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)}


@torch.no_grad()
def encode_text(model: dict, prompts: list[str]) -> torch.Tensor:
    ids = model["tokenizer"](prompts, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
    return model["text_encoder"](ids)[0]


@torch.no_grad()
def sample(model: dict, prompts: list[str], steps: int = InversionOptions.steps,
           guidance: float = SamplerOptions.guidance, seed: int = 0, chunk: int = 32) -> torch.Tensor:
    """Text-to-image with DDIM and classifier-free guidance; returns images [N,H,W,3] in 0..1."""
    unet, vae, sched = model["unet"], model["vae"], model["scheduler"]
    gen = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    noise = torch.randn(len(prompts), unet.config.in_channels, size, size, generator=gen)
    from tqdm import tqdm

    out = []
    for i in tqdm(range(0, len(prompts), chunk), desc=f"sampling {len(prompts)} prompts", unit="chunk",
                  disable=None):
        p = prompts[i : i + chunk]
        cond = encode_text(model, p)
        uncond = encode_text(model, [""]).expand_as(cond)
        ctx = torch.cat([uncond, cond])
        sched.set_timesteps(steps)
        x = noise[i : i + chunk] * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = unet(torch.cat([x, x]), t, encoder_hidden_states=ctx).sample
            e_u, e_c = eps.chunk(2)
            x = sched.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
        img = vae.decode(x / vae.config.scaling_factor).sample
        out.append(((img.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1))
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# classifying an image without its truth


def segment_generated(image) -> np.ndarray:
    """Object mask [H,W] of one image: the largest region farther than OBJECT_DISTANCE from the
    image's median colour (the object covers well under half of a frame)."""
    img = np.asarray(image, dtype=np.float64)
    bg = np.median(img.reshape(-1, 3), axis=0)
    far = np.linalg.norm(img - bg, axis=-1) > OBJECT_DISTANCE
    return largest_component(far)


_BG_MEANS: Optional[dict[str, np.ndarray]] = None


def background_means() -> dict[str, np.ndarray]:
    """Mean colour of each background plate (over a few seeds)."""
    global _BG_MEANS
    if _BG_MEANS is None:
        _BG_MEANS = {
            name: np.mean([render_background(Scene(background=name, seed=s)).reshape(-1, 3).mean(0) for s in range(8)], 0)
            for name in BACKGROUNDS
        }
    return _BG_MEANS


def classify_image(image) -> dict:
    """Colour, shape and background names read off one image [H,W,3] in 0..1."""
    img = np.asarray(image, dtype=np.float64)
    mask = segment_generated(img)
    found = int(mask.sum()) >= MIN_OBJECT_PIXELS
    colour = nearest_colour(img[mask].mean(0)) if found else "none"
    shape, iou = classify_shape(mask) if found else ("none", 0.0)
    rest = img[~mask].mean(0)
    means = background_means()
    background = min(means, key=lambda k: float(np.linalg.norm(rest - means[k])))
    return {"found": found, "colour": colour, "shape": shape, "shape_iou": iou, "background": background,
            "object_pixels": int(mask.sum())}


def score(predictions: list[dict], scenes: list[Scene]) -> dict:
    """Accuracies of classified images against the scenes their captions came from."""
    n = len(scenes)
    acc = {k: sum(p[k] == getattr(s, k) for p, s in zip(predictions, scenes)) / n
           for k in ("colour", "shape", "background")}
    acc["all_three"] = sum(all(p[k] == getattr(s, k) for k in ("colour", "shape", "background"))
                           for p, s in zip(predictions, scenes)) / n
    acc["object_found"] = sum(p["found"] for p in predictions) / n
    return acc


def evaluation_scenes(n: int, seed: int) -> list[Scene]:
    """Scenes for n captions: the colour x shape x background combinations in a seeded random order
    (all of them, evenly, when n is a multiple of their number), each with a random path and motion."""
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(COLOURS, SHAPES, BACKGROUNDS))
    order = rng.permutation(len(combos))
    return [random_scene(rng).replace(colour=combos[order[i % len(combos)]][0], shape=combos[order[i % len(combos)]][1],
                                      background=combos[order[i % len(combos)]][2]) for i in range(n)]


@torch.no_grad()
def word_maps(model: dict, n: int = 24, timesteps=(200, 500, 800), seed: int = 11, side: int = 8) -> dict:
    """How well the cross-attention maps of the ``side`` x ``side`` layers (the ones local blend reads) mark
    each word's region, on rendered frames noised at ``timesteps``.

    Why: Prompt-to-Prompt's word swap and local blend only work when a word's map lies on what the word names.
    Per word group (colour, shape: the object; background words: the rest) it reports the head-mean attention
    probability on its region and off it, their ratio (median over frames), and the IoU of the map above 0.3 x
    its maximum with the region's cells.
    """
    from diffusers import DDPMScheduler

    from vp2p_core.text import word_token_indices

    from .train import CaptionTokens, WordMapKeeper

    unet, te, vae, tok = model["unet"], model["text_encoder"], model["vae"], model["tokenizer"]
    rng = np.random.default_rng(seed)
    clips = [render(random_scene(rng, frames=1)) for _ in range(n)]
    x = torch.stack([c.frames[0] for c in clips]).permute(0, 3, 1, 2) * 2 - 1
    masks = torch.stack([c.masks[0] for c in clips])
    cell = torch.nn.functional.adaptive_avg_pool2d(masks.float()[:, None], side).flatten(1)  # object share
    words = CaptionTokens(tok)
    groups = {"colour": [], "shape": [], "background": []}
    for c in clips:  # captions are "a <colour> <shape> <verb> on <background>"
        groups["colour"].append(word_token_indices(c.caption, 1, tok))
        groups["shape"].append(word_token_indices(c.caption, 2, tok))
        groups["background"].append(words(c.scene, c.caption)[1])
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    ctx = te(tok([c.caption for c in clips], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
    gen = torch.Generator().manual_seed(seed)
    with WordMapKeeper(unet) as keeper:
        for t in timesteps:
            tt = torch.full((n,), t)
            unet(sched.add_noise(z, torch.randn(z.shape, generator=gen), tt), tt, encoder_hidden_states=ctx)
    maps = [k for k in keeper.maps if k.shape[1] == side * side]
    out = {}
    for name, toks in groups.items():
        on, off, ratio, iou = [], [], [], []
        for p in maps:
            for i in range(n):
                region = cell[i] > 0.5 if name != "background" else cell[i] < 0.05
                away = cell[i] < 0.05 if name != "background" else cell[i] > 0.5
                if not region.any() or not away.any():
                    continue
                m = p[i][:, toks[i]].sum(-1)
                on.append(float(m[region].mean()))
                off.append(float(m[away].mean()))
                ratio.append(on[-1] / max(off[-1], 1e-8))
                hot = m > 0.3 * m.max()
                iou.append(float((hot & region).sum() / (hot | region).sum()))
        out[name] = {"on_region": float(np.mean(on)), "off_region": float(np.mean(off)),
                     "median_ratio": float(np.median(ratio)), "map_iou": float(np.mean(iou))}
    return out


def save_grid(images: torch.Tensor, path: str, cols: int = 10) -> None:
    from PIL import Image

    imgs = images.numpy()
    n, h, w, _ = imgs.shape
    rows = (n + cols - 1) // cols
    grid = np.ones((rows * h, cols * w, 3))
    for i, im in enumerate(imgs):
        grid[(i // cols) * h : (i // cols + 1) * h, (i % cols) * w : (i % cols + 1) * w] = im
    image = Image.fromarray((grid * 255).round().astype(np.uint8))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(WEIGHTS))
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--steps", type=int, default=InversionOptions.steps)
    p.add_argument("--guidance", type=float, default=SamplerOptions.guidance)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--verb", action="store_true", help="captions with the verb ('bouncing') as well")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--grid", default=None, help="write the samples as a PNG grid")
    p.add_argument("--json", default=None, help="write the figures and per-sample results as JSON")
    p.add_argument("--maps", action="store_true", help="also measure how well the word maps mark their regions")
    a = p.parse_args(argv)
    if a.n < 1 or a.steps < 1:
        p.error(f"--n and --steps: expected at least 1 each, got {a.n}, {a.steps}")
    try:  # the outputs are written after the sampling
        for name in ("grid", "json"):
            if getattr(a, name):
                check_writable(getattr(a, name), f"--{name}")
    except VP2PInputError as e:
        p.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)

    scenes = evaluation_scenes(a.n, a.seed)
    prompts = [caption(s, verb=a.verb) for s in scenes]
    truth_pred = [classify_image(render(s.replace(frames=1)).frames[0]) for s in scenes]
    truth = score(truth_pred, scenes)

    t0 = time.perf_counter()
    model = load_model(a.model)
    images = sample(model, prompts, steps=a.steps, guidance=a.guidance, seed=a.seed)
    secs = time.perf_counter() - t0
    preds = [classify_image(im) for im in images]
    gen = score(preds, scenes)
    per_colour = {c: sum(p["colour"] == c for p, s in zip(preds, scenes) if s.colour == c)
                  / max(1, sum(s.colour == c for s in scenes)) for c in COLOURS}
    per_shape = {c: sum(p["shape"] == c for p, s in zip(preds, scenes) if s.shape == c)
                 / max(1, sum(s.shape == c for s in scenes)) for c in SHAPES}
    per_bg = {c: sum(p["background"] == c for p, s in zip(preds, scenes) if s.background == c)
              / max(1, sum(s.background == c for s in scenes)) for c in BACKGROUNDS}
    result = {"n": a.n, "steps": a.steps, "guidance": a.guidance, "seconds": round(secs, 1),
              "generated": gen, "classifier_on_rendered_truth": truth,
              "per_colour": per_colour, "per_shape": per_shape, "per_background": per_bg}
    if a.maps:
        result["word_maps"] = word_maps(model)
    print(json.dumps(result, indent=1))
    if a.grid:
        save_grid(images, a.grid)
    if a.json:
        atomic_write_text(a.json, json.dumps({**result, "samples": [
            {"prompt": pr, **pd} for pr, pd in zip(prompts, preds)]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
