"""The README's main command: a whole Video-P2P edit on the shipped small model and a rendered clip.

    python -m vp2p_world.demo                      # red ball -> blue ball, word swap + local blend
    python -m vp2p_world.demo --target-prompts "a red square bouncing on green grass" --blend-words ball
    python -m vp2p_world.demo --model path/to/sd15-folder --clip frames_dir --source-prompt ... --target-prompts ...

Writes the edited clip (GIF), a side-by-side PNG (source | reconstruction | edit | blend-word attention)
and prints the quality figures measured against the rendered ground truth of the edit. The edit is pasted over
the source frames through its local-blend mask (--no-composite: the decoded edit as it is), so the figures
include the background PSNR before compositing too.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

WEIGHTS = Path(__file__).resolve().parent / "weights"
log = logging.getLogger("vp2p_world.demo")


class BarProgress:
    """Host progress callback drawing one tqdm bar per stage (a stage restarts its count at 1)."""

    def __init__(self, names):
        from tqdm import tqdm

        self.tqdm, self.bar = tqdm, None
        self.names = iter(names)

    def __call__(self, done: int, total: int, preview) -> None:
        if self.bar is None or done == 1 and self.bar.n >= 1:
            if self.bar is not None:
                self.bar.close()
            self.bar = self.tqdm(total=total, desc=next(self.names, "stage"), leave=True, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


VIDEO_SUFFIXES = (".gif", ".mp4", ".mov", ".webm", ".mkv", ".avi")  # frame by frame (PyAV, upright; GIF: imageio)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")  # a folder's frames; other files skipped


def as_rgb8(image: np.ndarray, spec: str) -> np.ndarray:
    """A read frame as [H, W, 3] 8-bit RGB: grey (with or without alpha) repeated, an alpha channel dropped, 16 bits
    rounded to 8."""
    from vp2p_core import VP2PInputError

    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise VP2PInputError(f"--clip: {spec} has a frame of shape {image.shape}; expected grey or RGB images")
    if image.dtype == np.uint16:  # 16-bit PNG or TIFF
        image = (image.astype(np.float64) / 257.0).round().astype(np.uint8)
    if image.dtype != np.uint8:
        raise VP2PInputError(f"--clip: {spec} has {image.dtype} frames; expected 8- or 16-bit images")
    return np.repeat(image[..., :1], 3, axis=-1) if image.shape[-1] < 3 else image[..., :3]


def load_clip(spec: str, framing: "FramesOptions", resolution: int):
    """A named rendered scene ('red ball bounce green grass') or a folder of frames / a GIF or MP4 file, of which
    ``framing`` picks the frames (a video is read no further than the last one)."""
    from vp2p_core import VP2PInputError
    from vp2p_core.frames import read_video, take_frames

    from .render import Scene, render

    frames = framing.frames
    path = Path(spec)
    if path.exists():
        import imageio.v3 as iio

        files = sorted((f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES),
                       key=lambda p: (len(p.stem), p.stem)) if path.is_dir() else [path]

        def read(f):
            video = f.suffix.lower() in VIDEO_SUFFIXES
            try:  # a video's frames one by one, or one image
                yield from iio.imiter(f) if video else [iio.imread(f)]
            except Exception as e:  # imageio's plugins raise their own kinds
                kind = "a video" if video else "an image"
                raise VP2PInputError(f"--clip: {f} could not be read as {kind} ({type(e).__name__}: {e})") from None

        if path.is_dir():  # only the files taken are read
            imgs = [next(read(f)) for f in take_frames(files, framing, what=f"--clip: {spec}")]
        elif path.suffix.lower() in VIDEO_SUFFIXES and path.suffix.lower() != ".gif":
            imgs, _ = read_video(str(path), framing, what=f"--clip: {spec}")  # upright, as the node reads it
        else:
            with contextlib.closing(read(path)) as frames_read:  # the file closes once the last frame is taken
                imgs = take_frames(frames_read, framing, what=f"--clip: {spec}")
        imgs = [as_rgb8(im, spec) for im in imgs]
        sizes = list(dict.fromkeys(im.shape[:2] for im in imgs))
        if len(sizes) > 1:
            raise VP2PInputError(f"--clip: {spec} has frames of different sizes {sizes[:3]}; expected one clip's "
                                 "frames, all of one size")
        x = torch.from_numpy(np.stack(imgs)).float() / 255.0
        x = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2), size=(resolution, resolution), mode="bilinear",
                                            antialias=True).permute(0, 2, 3, 1).clamp(0, 1)
        return x, None, None
    if "/" in spec or path.suffix:
        raise VP2PInputError(f"--clip: {spec} does not exist; give a frames folder, a GIF or MP4 file, or rendered "
                             "scene words such as 'red ball bounce green grass'")
    from .render import BACKGROUNDS, COLOURS, PATHS, SHAPES

    kw, text = {}, f" {spec} "
    for bg in BACKGROUNDS:  # multi-word names first ('green grass' is not the colour green)
        if f" {bg} " in text:
            kw["background"] = bg
            text = text.replace(f" {bg} ", " ")
    rest = []
    for w in text.split():
        if w in COLOURS:
            kw["colour"] = w
        elif w in SHAPES:
            kw["shape"] = w
        elif w in PATHS:
            kw["path"] = w
        else:
            rest.append(w)
    if rest:
        raise VP2PInputError(f"--clip: {spec!r} is neither a file or folder nor a rendered scene: unknown words "
                             f"{' '.join(rest)!r}; colours {list(COLOURS)}, shapes {list(SHAPES)}, "
                         f"paths {list(PATHS)}, backgrounds {list(BACKGROUNDS)}")
    if framing.start_frame or framing.frame_stride != 1:
        raise VP2PInputError("--start-frame, --frame-stride: pick frames of a --clip file or folder; a rendered scene "
                             "is rendered from its first frame")
    scene = Scene(frames=frames, resolution=resolution, **kw)
    clip = render(scene)
    return clip.frames, scene, clip


def ground_truth(scene, source_prompt: str, target_prompt: str):
    """Render the edit's truth when the target prompt names scene attributes (colour, shape, background)."""
    from .render import BACKGROUNDS, COLOURS, SHAPES, render

    if scene is None:
        return None
    t = f" {target_prompt} "
    changes = {}
    for b in sorted(BACKGROUNDS, key=len, reverse=True):  # multi-word names first, then out of the way: the
        if f" {b} " in t:  # 'green' of 'green grass' is not the object's colour
            if b != scene.background:
                changes["background"] = b
            t = t.replace(f" {b} ", " ")
    for c in COLOURS:
        if f" {c} " in t and c != scene.colour:
            changes["colour"] = c
    for s in SHAPES:
        if f" {s} " in t and s != scene.shape:
            changes["shape"] = s
    return render(scene.replace(**changes)) if changes else None


def attention_strip(maps: torch.Tensor, token_ids: list[int], size: int) -> torch.Tensor:
    """[F,hb,wb,77] maps -> [F,size,size,3] heat images of the given tokens (summed, per-frame normalised)."""
    m = maps[..., token_ids].sum(-1)
    m = m / m.amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    m = torch.nn.functional.interpolate(m[:, None], size=(size, size), mode="nearest")[:, 0]
    return torch.stack([m, m * 0.6, 1 - m], dim=-1)


def save_outputs(out: Path, source, recon, edited, attn, fps: int = 8) -> dict:
    """The edit and reconstruction GIFs and the side-by-side PNG, each written whole or not at all."""
    import imageio.v3 as iio

    from vp2p_core.files import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    to8 = lambda x: (x.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    gif, recon_gif = out / "edit.gif", out / "reconstruction.gif"
    for path, frames in ((gif, edited), (recon_gif, recon)):
        atomic_write(path, lambda tmp: iio.imwrite(tmp, to8(frames), extension=".gif", duration=1000 // fps, loop=0))
    cols = [source, recon, edited] + ([attn] if attn is not None else [])
    grid = torch.cat([torch.cat(list(c), dim=0) for c in cols], dim=1)  # frames down, columns across
    scale = max(1, 256 // source.shape[1])
    grid = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    png = out / "side_by_side.png"
    atomic_write(png, lambda tmp: iio.imwrite(tmp, to8(grid), extension=".png"))
    return {"gif": str(gif), "reconstruction": str(recon_gif), "png": str(png)}


def quality(source, recon, edited, clip, truth, decoded=None) -> dict:
    """Figures against the rendered truth; only inversion PSNR for a clip that was not rendered. ``decoded``: the
    edit before compositing, when ``edited`` is composited (its background PSNR is reported beside)."""
    from . import metrics

    q = {"inversion_psnr": metrics.psnr(recon, source)}
    if clip is None:
        return q
    region = metrics.object_region(clip, truth) if truth is not None else metrics.object_region(clip)
    if truth is None or truth.scene.background == clip.scene.background:  # kept background: compare with the source
        q["background_psnr"] = metrics.background_psnr(edited, source, region)
        if decoded is not None:
            q["background_psnr_decoded"] = metrics.background_psnr(decoded, source, region)
    ref = truth if truth is not None else clip
    if truth is not None:
        q["psnr_to_truth"] = metrics.psnr(edited, truth.frames)
        q["object_colour_accuracy"] = metrics.object_hue_accuracy(edited, truth.masks, truth.scene.colour)
    q["structure_iou"] = metrics.mask_iou(metrics.segment_object(edited, ref), clip.masks)
    tc = metrics.temporal_consistency(edited, ref.masks)
    q["object_colour_change"], q["background_change"] = tc["object"], tc["background"]
    return q


def fail(parser: argparse.ArgumentParser, message: str):
    """Bad input: one line naming the flag, exit code 2 (argparse's own code for a bad flag)."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def parse_args(argv):
    """Every flag, checked before any work starts: bad input exits with code 2 and names the flag."""
    from vp2p_core import (CompositeOptions, EditOptions, InflationOptions, InversionOptions, LightOptions,
                           SamplerOptions, TuneOptions, VP2PInputError)
    from vp2p_core.files import check_writable
    from vp2p_core.options import ContextOptions, FramesOptions

    from .settings import add_option_flags, options_from_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(WEIGHTS), help="diffusers-format SD folder or single-file .safetensors")
    p.add_argument("--clip", default="red ball bounce green grass",
                   help="rendered scene words (colour shape path background) or a frames folder / GIF / MP4")
    p.add_argument("--source-prompt", default=None, help="what the clip shows (default: the scene's caption)")
    p.add_argument("--target-prompts", default=None,
                   help="the edited prompt (default for a rendered clip: its caption with the colour swapped, red -> "
                        "blue or, for a blue object, blue -> red)")
    add_option_flags(p, InflationOptions, skip=("weight_dtype",))
    add_option_flags(p, TuneOptions, prefix="tune-")
    add_option_flags(p, InversionOptions)
    add_option_flags(p, EditOptions, defaults={"blend_words": None})
    add_option_flags(p, SamplerOptions, skip=("guidance",))  # one --guidance for the inversion and the sampler
    add_option_flags(p, CompositeOptions)
    add_option_flags(p, LightOptions)
    add_option_flags(p, ContextOptions)
    add_option_flags(p, FramesOptions)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--json", action="store_true", help="print the figures as JSON only")
    a = p.parse_args(argv)
    try:
        options_from_args(a, FramesOptions)
    except VP2PInputError as e:
        fail(p, str(e))
    if a.resolution < 64 or a.resolution % 64:
        fail(p, f"--resolution: expected a multiple of 64 pixels, got {a.resolution}")
    if a.threads < 0:
        fail(p, f"--threads: expected 0 or more, got {a.threads}")
    model = Path(a.model)
    if not model.exists():
        fail(p, f"--model: {a.model} does not exist; give a diffusers SD folder or a .safetensors file")
    try:  # the outputs are written after the run
        check_writable(a.out, "--out", folder=True)
    except VP2PInputError as e:
        fail(p, str(e))
    return p, a


def main(argv=None) -> int:
    from vp2p_core import (CompositeOptions, EditOptions, Host, InflationOptions, InversionOptions, LightOptions,
                           SamplerOptions, TuneOptions, VP2PInputError)
    from vp2p_core.context import ContextWindows
    from vp2p_core.options import ContextOptions, FramesOptions
    from vp2p_core.pipeline import Components, run

    from .settings import as_flag, options_from_args

    p, a = parse_args(argv)
    try:
        inflation = options_from_args(a, InflationOptions)
        tune = options_from_args(a, TuneOptions, prefix="tune-")
        inversion = options_from_args(a, InversionOptions)
        sampler = options_from_args(a, SamplerOptions, guidance=inversion.guidance)
        context = ContextWindows(options_from_args(a, ContextOptions))
        context.check_clip(a.frames, what="--frames")
        frames, scene, clip = load_clip(a.clip, options_from_args(a, FramesOptions), a.resolution)
        source = a.source_prompt or (clip.caption if clip is not None else None)
        if source is None:
            raise VP2PInputError("--source-prompt: give the prompt that describes your clip")
        if a.target_prompts:
            target = a.target_prompts
        elif scene is not None:
            swap = "red" if scene.colour == "blue" else "blue"
            target = source.replace(f" {scene.colour} ", f" {swap} ", 1)
        else:
            raise VP2PInputError("--target-prompts: give the edited prompt for your clip")
        if target.strip() == source.strip():
            raise VP2PInputError(f"--target-prompts: the edited prompt is the source prompt {source!r}; give the edit")
        # the rendered object's word unless --blend-words is given (an override would be refused by field name)
        blend = {} if a.blend_words is not None else {"blend_words": scene.shape if scene is not None else ""}
        edit = options_from_args(a, EditOptions, **blend)
        no_mask = {} if edit.blend_words.strip() else {"composite": False}  # no blend words: no mask to composite
        composite = options_from_args(a, CompositeOptions, **no_mask)
        light = options_from_args(a, LightOptions)
    except VP2PInputError as e:
        fail(p, str(e))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if a.threads:
        torch.set_num_threads(a.threads)

    t0 = time.perf_counter()
    try:
        model_path = Path(a.model)
        inflate = dict(frame_attention=inflation.frame_attention, group_norm=inflation.group_norm)
        comps = (Components.from_single_file(model_path, WEIGHTS / "tokenizer", **inflate)  # SD's CLIP tokenizer
                 if model_path.is_file() else Components.from_folder(model_path, **inflate))
    except VP2PInputError as e:  # the loaders name their own input (model, checkpoint)
        fail(p, str(as_flag(e, "--model")))
    try:
        inversion_bar = "DDIM + null-text inversion" if inversion.mode == "null_text" else "DDIM inversion"
        bar = BarProgress((["light"] if light.normalise_light else []) + (["tune"] if tune.steps else [])
                          + [inversion_bar, "edit"])  # one bar per stage that reports progress, in run()'s order
        res = run(comps, frames, source, target, tune=tune, inversion=inversion, edit=edit, sampler=sampler,
                  composite=composite, host=Host(progress=bar), context=context, light=light)
        bar.close()
    except VP2PInputError as e:
        fail(p, str(e))
    from vp2p_core.text import word_token_indices

    attn = None
    if res.edit.attention_maps is not None:
        words = (edit.blend_target_words or edit.blend_words or target.split()[-1]).replace(",", " ").split()
        ids = sorted({i for w in words for i in word_token_indices(target, w, comps.tokenizer)})
        if ids:
            attn = attention_strip(res.edit.attention_maps[1], ids, a.resolution)
    files = save_outputs(Path(a.out), frames, res.source, res.edited[0], attn)
    truth = ground_truth(scene, source, target)
    figures = quality(frames, res.source, res.edited[0], clip, truth,
                      decoded=res.decoded[0] if res.composited else None)
    report = {"source": source, "target": target, "mode": res.edit.stats, "figures": figures,
              "seconds": {k: round(v, 2) for k, v in res.timings.items()} | {"total": round(time.perf_counter() - t0, 1)},
              "unet_evaluations": res.evaluations, "files": files}
    if a.json:
        print(json.dumps(report, indent=1, default=float))
        return 0
    print(f"\n{source!r} -> {target!r}")
    for k, v in figures.items():
        print(f"  {k:24s} {v:.3f}" if isinstance(v, float) else f"  {k:24s} {v}")
    print(f"  time: {report['seconds']}")
    print(f"  UNet evaluations (clips): {res.evaluations}")
    print(f"  wrote {files['gif']}, {files['reconstruction']} and {files['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
