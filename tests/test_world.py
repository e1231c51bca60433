"""The small world: renderer, SD's tokenizer built offline, and the shipped tiny model following prompts.

Renderer/metric cases on hand-made clips are in test_world_metrics.py; this file covers what those
don't: exact compositing, every scene option, the tokenizer ids, the image classifier that
``vp2p_world.evaluate`` uses, and the shipped model (loads offline, generates the named colour).
Set VP2P_WORLD_MODEL to check another trained folder.
"""
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vp2p_world import evaluate
from vp2p_world.render import (BACKGROUNDS, COLOURS, PATHS, SHAPES, Scene, random_scene, render, render_background,
                               trajectory)

WEIGHTS = Path(os.environ.get("VP2P_WORLD_MODEL", Path(__file__).resolve().parents[1] / "vp2p_world" / "weights"))
TOKENIZER = Path(__file__).resolve().parents[1] / "vp2p_world" / "weights" / "tokenizer"


# ---------------------------------------------------------------------------------------------- renderer


def test_every_option_renders_composited_exactly():
    for shape, colour, bg, path in itertools.islice(
            itertools.product(SHAPES, COLOURS, BACKGROUNDS, PATHS), 0, None, 7):
        scene = Scene(shape=shape, colour=colour, background=bg, path=path, seed=11)
        clip = render(scene)
        assert clip.frames.shape == (8, 64, 64, 3) and clip.frames.dtype == torch.float32
        assert clip.masks.shape == (8, 64, 64) and clip.masks.dtype == torch.bool
        assert 0 <= float(clip.frames.min()) and float(clip.frames.max()) <= 1
        cov = clip.coverage[..., None]
        bgp = torch.from_numpy(render_background(scene)).float()
        expect = cov * torch.tensor(COLOURS[colour]) + (1 - cov) * bgp
        assert torch.allclose(clip.frames, expect, atol=1e-6)  # object painted exactly by coverage
        assert torch.equal(clip.masks, clip.coverage > 0.5)  # masks are exactly the > 0.5 coverage
        assert bool(clip.masks.flatten(1).any(1).all())  # the object is visible in every frame
        assert clip.caption == f"a {colour} {shape} {PATHS[path]} on {bg}"


def test_same_scene_same_bits_other_seed_other_clip():
    s = Scene(shape="star", colour="purple", background="water", path="circle", seed=5, frames=16)
    a, b = render(s), render(Scene(**vars(s)))
    assert a.frames.shape[0] == 16
    assert torch.equal(a.frames, b.frames) and torch.equal(a.masks, b.masks)
    c = render(s.replace(seed=6))
    assert not torch.equal(a.masks, c.masks) and not torch.equal(a.frames, c.frames)


def test_shape_edit_keeps_the_path():
    s = Scene(shape="ball", colour="red", background="sand", path="slide", seed=2)
    assert np.array_equal(trajectory(s), trajectory(s.replace(shape="triangle", colour="green", background="snow")))
    src, tri = render(s), render(s.replace(shape="triangle"))
    assert not torch.equal(src.masks, tri.masks)
    clear = (src.coverage == 0) & (tri.coverage == 0)
    assert torch.equal(src.frames[clear], tri.frames[clear])  # background untouched


def test_bad_scene_is_refused_by_name():
    with pytest.raises(ValueError, match="colour"):
        Scene(colour="teal")
    with pytest.raises(ValueError, match="shape"):
        Scene(shape="cube")
    with pytest.raises(ValueError, match="seed"):
        Scene(seed=-1)
    with pytest.raises(ValueError, match="frames"):
        Scene(frames=2.5)


# ---------------------------------------------------------------------------------------------- tokenizer


def test_training_pool_adds_moving_clips_without_changing_its_scenes():
    from vp2p_world.train import FramePool

    still, moving = FramePool(3, clips=6, frames=2), FramePool(3, clips=6, frames=2, moving=1.0)
    assert all(s.still and not s.texture and s.growth == 1.0 for s in still.scenes)
    assert all(m.replace(camera="none", lighting="none", growth=1.0, occluder=False, texture=False) == s
               for s, m in zip(still.scenes, moving.scenes)), "motion must not change the scenes it is added to"
    assert any(not m.still for m in moving.scenes)
    assert torch.equal(still.foreground, still.masks), "without an occluder the VAE weighs the object alone"
    occluded = [i for i, m in enumerate(moving.scenes) if m.occluder]
    assert all((moving.foreground[i] & ~moving.masks[i]).any() for i in occluded)
    with pytest.raises(ValueError, match="moving"):
        FramePool(3, clips=1, moving=1.5)


def test_a_resumed_run_draws_the_batches_the_whole_run_would():
    """A resumed run replays the skipped stage's draws from the pool's one generator, as many as the resumed folder
    records (its steps at its batch, whatever this command's flags), so that it trains on the whole run's batches;
    a folder that records none replays nothing."""
    from vp2p_world.train import FramePool, skip_recorded_draws

    whole, resumed, unrecorded = (FramePool(3, clips=4, frames=2) for _ in range(3))
    for _ in range(5):
        whole.sample(3)
    skip_recorded_draws(resumed, {"steps": 5, "batch": 3}, "the VAE stage", "W.vae")
    skip_recorded_draws(unrecorded, None, "the VAE stage", "weights/vae")
    a, b, c = whole.sample(3), resumed.sample(3), unrecorded.sample(3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    fresh = FramePool(3, clips=4, frames=2).sample(3)
    assert torch.equal(c[0], fresh[0]) and torch.equal(c[1], fresh[1])


def test_a_model_folder_is_swapped_in_whole_or_not_at_all(tmp_path):
    """A stage folder, the model and the ControlNet are written beside their place and swapped in: a write that
    fails leaves the old folder as it was and nothing else; a missing parent folder is made."""
    from vp2p_world.train import write_folder_atomically

    out = tmp_path / "runs" / "cn"
    write_folder_atomically(out, lambda tmp: (tmp / "a.txt").write_text("first"))
    assert (out / "a.txt").read_text() == "first"

    def fails(tmp):
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_folder_atomically(out, fails)
    assert (out / "a.txt").read_text() == "first" and sorted(p.name for p in out.parent.iterdir()) == ["cn"]
    write_folder_atomically(out, lambda tmp: (tmp / "b.txt").write_text("second"))
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"] and sorted(p.name for p in out.parent.iterdir()) == ["cn"]
    import stat

    old = os.umask(0o022)
    try:  # mkdtemp makes a folder 0700: the model folder gets the mode any other folder would
        write_folder_atomically(out, lambda tmp: (tmp / "c.txt").write_text("third"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


def test_benchmarks_md_is_rewritten_whole_with_its_mode(tmp_path, monkeypatch):
    """The benchmark's section goes into BENCHMARKS.md through a temporary file (mkstemp: 0600): the file keeps the
    mode a plain file gets, and a failed write leaves the old text and no temporary file."""
    import stat

    from vp2p_world import benchmark

    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Other\nkept\n\n## Small-world edit benchmark\nold\n")
    old = os.umask(0o022)
    try:
        benchmark.write_section(md, "## Small-world edit benchmark\nnew\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(md.stat().st_mode) == 0o644
    assert md.read_text() == "# Benchmarks\n\n## Other\nkept\n\n## Small-world edit benchmark\nnew\n"

    real = Path.write_text

    def half_then_full(self, text, *a, **k):  # the disk fills halfway through the temporary file
        real(self, text[:5])
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", half_then_full)
        with pytest.raises(OSError, match="disk full"):
            benchmark.write_section(md, "## Small-world edit benchmark\nnewer\n")
    assert "new\n" in md.read_text() and sorted(p.name for p in tmp_path.iterdir()) == ["BENCHMARKS.md"]


@pytest.mark.parametrize("flags,named", [(["--batch", "1"], "--batch"), (["--vae-steps", "0"], "--vae-steps"),
                                         (["--unet-steps", "-1"], "--unet-steps"), (["--clips", "0"], "--clips"),
                                         (["--vae-from", "no/such/folder"], "--vae-from")])
def test_train_refuses_flags_that_would_train_nothing_or_nans_by_name(flags, named, tmp_path, capsys):
    """--batch 1 gave the VAE fine-tune an empty half (a NaN loss, a NaN VAE written over --out); --vae-steps 0
    divided by zero; a mistyped folder was looked up on the Hugging Face Hub."""
    from vp2p_world.train import main

    with pytest.raises(SystemExit) as exit_info:
        main([*flags, "--out", str(tmp_path / "W")])
    assert exit_info.value.code == 2 and named in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["train", "train_controlnet"])
def test_train_refuses_a_moving_share_out_of_range_by_its_flag_and_writes_nothing(command, tmp_path, capsys):
    import importlib

    main = importlib.import_module(f"vp2p_world.{command}").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--moving", "1.5", "--out", str(tmp_path / "W")])
    assert exit_info.value.code == 2 and "--moving" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_vae_finetune_holds_the_latents_the_unet_learned_and_leaves_the_callers_vae():
    from diffusers import AutoencoderKL

    from vp2p_world.train import FramePool, finetune_vae, vae_config

    torch.manual_seed(0)
    vae = AutoencoderKL(**vae_config()).eval()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    pool = FramePool(3, clips=4, frames=2)
    free, s_free = finetune_vae(vae, pool, steps=12, batch=4, seed=3, anchor=0.0, moving_clips=4,
                                 check_clips=2)
    held, s_held = finetune_vae(vae, pool, steps=12, batch=4, seed=3, anchor=1e3, moving_clips=4,
                                 check_clips=2)
    assert all(torch.equal(v, before[k]) for k, v in vae.state_dict().items()), "the caller's VAE was changed"
    assert not torch.equal(free.decoder.conv_out.weight, vae.decoder.conv_out.weight)
    # the same steps without the anchor move the still world's latents several times further
    assert s_held["latent_drift"] < 0.5 * s_free["latent_drift"], (s_held, s_free)
    assert free.config.scaling_factor == vae.config.scaling_factor  # the UNet's latent scale is kept


def test_tokenizer_matches_sd_ids_offline():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER), model_max_length=77, local_files_only=True)
    assert len(tok) == 49408
    # SD1.x / openai CLIP ids ("a photo of a dog" is the transformers CLIP docs' example)
    assert tok("a photo of a dog").input_ids == [49406, 320, 1125, 539, 320, 1929, 49407]
    assert tok("a red ball").input_ids == [49406, 320, 736, 1069, 49407]
    padded = tok("a red ball", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[5:] == [49407] * 72  # SD1.x pads with <|endoftext|>
    lines = (TOKENIZER / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and len(lines) == 48895


# ---------------------------------------------------------------------------------------------- evaluation classifier


def test_classifier_reads_rendered_frames_correctly():
    scenes = evaluate.evaluation_scenes(24, seed=3)
    preds = [evaluate.classify_image(render(s.replace(frames=1)).frames[0]) for s in scenes]
    acc = evaluate.score(preds, scenes)
    assert acc["colour"] == 1.0 and acc["shape"] == 1.0 and acc["background"] == 1.0


# ---------------------------------------------------------------------------------------------- shipped model

needs_model = pytest.mark.skipif(not (WEIGHTS / "unet").is_dir(),
                                 reason=f"no trained model in {WEIGHTS} (python -m vp2p_world.train)")


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return evaluate.load_model(WEIGHTS)


@needs_model
def test_shipped_model_folder_is_small_and_sd_shaped(model):
    size = sum(f.stat().st_size for f in WEIGHTS.rglob("*") if f.is_file())
    assert size < 30e6, f"shipped model is {size / 1e6:.1f} MB"
    index = json.loads((WEIGHTS / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert list((WEIGHTS / "unet").glob("*.safetensors")) and not list(WEIGHTS.rglob("*.bin"))
    vae, unet, te, sched = model["vae"], model["unet"], model["text_encoder"], model["scheduler"]
    assert len(vae.config.block_out_channels) == 3 and vae.config.latent_channels == 4  # 64x64 -> 16x16x4
    assert vae.config.scaling_factor != 0.18215 and 0.05 < vae.config.scaling_factor < 20
    assert unet.config.sample_size == 16 and unet.config.cross_attention_dim == te.config.hidden_size
    assert te.config.vocab_size == 49408 and te.config.max_position_embeddings == 77
    c = sched.config
    assert (c.beta_schedule, c.beta_start, c.beta_end, c.num_train_timesteps) == ("scaled_linear", 0.00085, 0.012, 1000)
    assert c.set_alpha_to_one is False and c.clip_sample is False and c.prediction_type == "epsilon"
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert z.shape == (1, 4, 16, 16)


@needs_model
def test_shipped_vae_keeps_the_objects_colour_and_shape(model):
    """No UNet can generate a colour its VAE loses: rendered frames must survive the round trip."""
    rng = np.random.default_rng(5)
    scenes = [random_scene(rng, frames=1) for _ in range(20)]
    frames = torch.stack([render(s).frames[0] for s in scenes])
    with torch.no_grad():
        x = frames.permute(0, 3, 1, 2) * 2 - 1
        rec = model["vae"].decode(model["vae"].encode(x).latent_dist.mean).sample
    rec = ((rec.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    got = [evaluate.classify_image(im) for im in rec]
    assert sum(g["colour"] == s.colour for g, s in zip(got, scenes)) >= 19, [g["colour"] for g in got]
    assert sum(g["shape"] == s.shape for g, s in zip(got, scenes)) >= 16, [g["shape"] for g in got]


@needs_model
def test_shipped_model_follows_colour_and_shape_in_the_prompt(model):
    prompts = ["a red ball on gray road", "a blue ball on gray road", "a blue square on sand",
               "a yellow triangle on snow", "a purple star on green grass"]
    colours = ["red", "blue", "blue", "yellow", "purple"]
    shapes = ["ball", "ball", "square", "triangle", "star"]
    images = evaluate.sample(model, prompts, steps=15, guidance=7.5, seed=0)
    assert images.shape == (5, 64, 64, 3)
    got = [evaluate.classify_image(im) for im in images]
    assert [g["colour"] for g in got[:2]] == colours[:2], got  # the word swap the demo and benchmark rely on
    assert sum(g["colour"] == c for g, c in zip(got, colours)) >= 4, got
    assert sum(g["shape"] == s for g, s in zip(got, shapes)) >= 4, got


def test_grounding_loss_prefers_maps_on_their_regions_and_keeps_the_attention_exact():
    from diffusers import UNet2DConditionModel

    from vp2p_world.train import WordMapKeeper, grounding_loss, unet_config

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config(32)).eval()
    x, ctx, t = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32), torch.tensor([10, 700])
    default = unet.attn_processors
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=ctx).sample
        with WordMapKeeper(unet) as keeper:
            got = unet(x, t, encoder_hidden_states=ctx).sample
    assert unet.attn_processors == default  # put back
    kept = keeper.maps
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert sorted({int(round(k.shape[1] ** 0.5)) for k in kept}) == [4, 8, 16] and kept[0].shape[-1] == 77

    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[:, 8:32, 8:32] = True
    obj, bg = torch.zeros(2, 77), torch.zeros(2, 77)
    obj[:, [2, 3]], bg[:, [5, 6]] = 1, 1
    cell = torch.nn.functional.adaptive_avg_pool2d(masks.float()[:, None], 8).flatten(1)[..., None]  # [2,64,1]
    logits = torch.zeros(2, 64, 77)
    uniform = grounding_loss([logits.softmax(-1)], masks, obj, bg)
    logits[..., [2, 3]] += 6 * cell
    logits[..., [5, 6]] += 6 * (1 - cell)
    grounded = grounding_loss([logits.softmax(-1)], masks, obj, bg)
    swapped = grounding_loss([logits.softmax(-1)], masks, bg, obj)
    assert grounded < 0.25 * uniform and swapped > uniform, (grounded, uniform, swapped)
    assert grounding_loss([logits.softmax(-1)], masks, torch.zeros(2, 77), torch.zeros(2, 77)) == 0  # dropped captions


@needs_model
def test_shipped_model_word_maps_mark_the_object(model):
    """Prompt-to-Prompt's word swap and local blend read the colour and shape words' maps: they must be
    higher on the object than off it (the session-3 model had them lower, and its edits failed)."""
    torch.manual_seed(0)
    maps = evaluate.word_maps(model, n=8, timesteps=(500,))
    assert maps["colour"]["median_ratio"] > 10 and maps["shape"]["median_ratio"] > 10, maps
    assert maps["background"]["median_ratio"] > 10, maps  # background words on the background, not the object


@needs_model
def test_shipped_model_word_swap_recolours_the_object_and_keeps_the_clip():
    """The demo's edit in small: red -> blue ball with local blend changes the ball's colour, keeps where it is
    and keeps the grass (no tuning, few steps, so the figures sit below the demo's)."""
    from vp2p_core import CompositeOptions, EditOptions, InversionOptions, TuneOptions, composite_mask
    from vp2p_core.pipeline import Components, run
    from vp2p_world import metrics

    torch.set_num_threads(min(2, torch.get_num_threads()))
    comps = Components.from_folder(WEIGHTS)
    assert comps.model.vae_factor == 4  # 64 px frames, 16 px latents
    clip = render(Scene(colour="red", shape="ball", background="green grass", path="bounce", frames=4))
    truth = render(Scene(colour="blue", shape="ball", background="green grass", path="bounce", frames=4))
    composite = CompositeOptions(composite=True, mask_dilation=2, feather=2)
    res = run(comps, clip.frames, clip.caption, clip.caption.replace("red", "blue"), tune=TuneOptions(steps=0),
              inversion=InversionOptions(mode="fast", steps=12),
              edit=EditOptions(blend_words="ball", self_replace_on="both"), composite=composite)
    decoded, edited = res.decoded[0], res.edited[0]
    assert metrics.object_hue_accuracy(decoded, truth.masks, "blue") >= 0.75
    assert metrics.mask_iou(metrics.segment_object(decoded, truth), clip.masks) > 0.8  # 0.92; 0.10 temporal-only
    background = metrics.object_region(clip, truth)
    bg_decoded = metrics.background_psnr(decoded, clip.frames, background)
    assert bg_decoded > 22, bg_decoded
    mask = res.edit.blend_mask
    assert mask is not None and 0.05 < mask.float().mean() < 0.6  # 0.43: the ball, not the frame (1.0 before)
    # composited: the source's own pixels outside the dilated mask, the decoded edit's inside the mask
    assert res.composited
    alpha = composite_mask(mask[0], clip.frames.shape[1:3], composite)
    outside, inside = alpha == 0, alpha == 1
    assert outside.any() and torch.equal(edited[outside], clip.frames[outside])
    assert torch.equal(edited[inside], decoded[inside])
    assert metrics.object_hue_accuracy(edited, truth.masks, "blue") >= 0.75
    assert metrics.background_psnr(edited, clip.frames, background) > \
        metrics.background_psnr(decoded, clip.frames, background)


@needs_model
def test_sweep_runs_and_ranks_settings(tmp_path, capsys):
    from vp2p_world import sweep

    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = tmp_path / "rows.json"
    assert sweep.main(["--cross-replace", "0.2,1.0", "--self-replace", "0.5", "--mask-threshold", "0.3", "--steps", "3",
                       "--frames", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 2 * len(sweep.validation_cases())
    assert {r["cross_replace"] for r in rows} == {0.2, 1.0} and all(0 < r["mask"] <= 1 for r in rows)
    table = capsys.readouterr().out.split("| cross_replace |")[1]
    assert table.count("\n| ") == 2  # one ranked row per setting
