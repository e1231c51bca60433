"""The README's main command, end to end on the shipped model, with fewer steps."""
import json
import re
from pathlib import Path

import pytest
import torch

from vp2p_core.options import FramesOptions

WEIGHTS = Path(__file__).resolve().parents[1] / "vp2p_world" / "weights"
pytestmark = pytest.mark.skipif(not (WEIGHTS / "unet").is_dir(), reason="shipped model not trained yet")


def test_demo_runs_end_to_end(tmp_path, capsys):
    from vp2p_world import demo

    torch.manual_seed(0)
    rc = demo.main(["--tune-steps", "2", "--steps", "4", "--frames", "4", "--out", str(tmp_path), "--json"])
    assert rc == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["target"] == "a blue ball bouncing on green grass"
    # one bar per stage, each named for its stage (the light's bar took the tuning's name, and so on down)
    bars = [line.split(":")[0] for line in captured.err.replace("\r", "\n").splitlines() if "100%" in line]
    assert list(dict.fromkeys(bars)) == ["light", "tune", "DDIM + null-text inversion", "edit"], bars
    for f in ("edit.gif", "side_by_side.png", "reconstruction.gif"):
        assert (tmp_path / f).stat().st_size > 0
    figures = report["figures"]
    for key in ("inversion_psnr", "background_psnr", "background_psnr_decoded", "psnr_to_truth",
                "object_colour_accuracy", "structure_iou"):
        assert key in figures
    # composited by default: the background outside the blend mask is the source's own
    assert figures["background_psnr"] >= figures["background_psnr_decoded"]
    # source cond + target cond/uncond per step, and the world's edit guidance's contrast row in the first half
    assert report["unet_evaluations"]["edit"] == 4 * 3 + 2


def test_demo_reports_bad_prompts_clearly(tmp_path, capsys):
    from vp2p_world import demo

    with pytest.raises(SystemExit) as exit_:
        demo.main(["--tune-steps", "0", "--steps", "2", "--frames", "2", "--out", str(tmp_path),
                   "--blend-words", "cat"])
    assert exit_.value.code == 2
    assert "blend_words (source prompt): the word 'cat' is not in the prompt" in capsys.readouterr().err


def test_a_model_the_loaders_refuse_is_named_by_its_flag(tmp_path, capsys):
    """The model's loaders name their own inputs (model, checkpoint); the demo says --model, the flag typed."""
    from vp2p_world import demo

    (tmp_path / "notes.md").write_text("not a model")
    for model, message in [(tmp_path, "is not a diffusers SD folder"), (tmp_path / "notes.md", "is a .md file")]:
        with pytest.raises(SystemExit) as exit_:
            demo.main(["--model", str(model), "--out", str(tmp_path / "out")])
        assert exit_.value.code == 2
        assert f"error: --model: {str(model)!r} {message}" in capsys.readouterr().err
    from vp2p_core import VP2PInputError
    from vp2p_world.settings import as_flag

    # a loader that names its path before the colon keeps it, a Windows drive's colon included
    assert str(as_flag(VP2PInputError("model 'C:\\sd15': a UNet with 9 input channels"), "--model")) == \
        "--model 'C:\\sd15': a UNet with 9 input channels"



@pytest.mark.parametrize("argv,message", [
    (["--steps", "0"], "--steps: expected a value in [1, 500], got 0"),
    (["--tune-steps", "-1"], "--tune-steps: expected a value in [0, 10000], got -1"),
    (["--mask-threshold", "2"], "--mask-threshold: expected a value in [0.01, 0.99]"),
    (["--feather", "-1"], "--feather: expected a value in [0, 256], got -1"),
    (["--clip", "nothere.gif"], "--clip: nothere.gif does not exist"),
    (["--clip", "red blob"], "unknown words 'blob'"),
    (["--reweight-words", "blue"], "--reweight-values: give a value"),
    (["--target-prompts", "a red ball bouncing on green grass"], "--target-prompts: the edited prompt is the source"),
    (["--model", "no/such/model"], "--model: no/such/model does not exist"),
    (["--context-length", "8", "--context-overlap", "8"], "--context-overlap: expected fewer frames than "
                                                          "context_length (8), got 8"),
    (["--context-length", "0"], "--context-length: expected a value in [1, 4096], got 0"),
    (["--frames", "40", "--context-schedule", "standard_uniform"], "runs inside ComfyUI only"),
])
def test_demo_checks_every_argument_before_any_work(argv, message, capsys, monkeypatch):
    """Bad input exits with code 2 and names the flag, before the model is even loaded."""
    from vp2p_core import pipeline
    from vp2p_world import demo

    monkeypatch.setattr(pipeline.Components, "from_folder", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(SystemExit) as exit_:
        demo.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_run_edits_the_clip_as_evenly_lit_and_gives_its_light_back():
    """``run`` with ``normalise_light``: the VAE encodes the frames with their light taken out, every decoded frame
    (edit and reconstruction) gets it back, and the composite pastes that over the frames as lit, so outside the
    mask the result is the lit source's own pixels. The clip's tuning leaves the components as they were."""
    from vp2p_core import (CompositeOptions, EditOptions, InversionOptions, LightOptions, TuneOptions,
                           composite_frames, estimate_light, remove_light, restore_light)
    from vp2p_core import Host, VP2PInputError
    from vp2p_core.pipeline import Components, run
    from vp2p_world.render import Scene, render

    torch.manual_seed(0)
    clip = render(Scene(colour="green", shape="triangle", background="snow", frames=4, lighting="drift"))
    comps = Components.from_folder(WEIGHTS)
    encoded, decoded = [], []
    encode, decode = comps.encode_frames, comps.decode_latents
    comps.encode_frames = lambda frames, **kw: encoded.append(frames) or encode(frames, **kw)
    comps.decode_latents = lambda latents, **kw: decoded.append(decode(latents, **kw)) or decoded[-1]
    before = {k: v.clone() for k, v in comps.model.unet.state_dict().items()}
    fingerprint = comps.model.delta_fingerprint
    res = run(comps, clip.frames, clip.caption, clip.caption.replace("green", "red"), tune=TuneOptions(steps=1),
              inversion=InversionOptions(steps=2, mode="fast"), edit=EditOptions(blend_words="triangle"),
              composite=CompositeOptions(composite=True), light=LightOptions(normalise_light=True))
    after = comps.model.unet.state_dict()
    assert res.delta is not None and comps.model.delta_fingerprint == fingerprint
    assert all(torch.equal(before[k], after[k]) for k in before), "the clip's tuning stayed in the components"
    with pytest.raises(VP2PInputError, match="host"):
        run(comps, clip.frames, clip.caption, clip.caption, host=Host(device=torch.device("meta")))
    gains = estimate_light(clip.frames)
    assert float((gains[:, 0].max() - gains[:, 0].min())) > 0.05, "the test needs a clip whose light changes"
    assert torch.equal(res.light, gains) and torch.equal(encoded[0], remove_light(clip.frames, gains))
    assert torch.equal(res.decoded[0], restore_light(decoded[0], gains))
    assert torch.equal(res.source, restore_light(decoded[1], gains))
    assert res.composited
    lit = composite_frames(edited=res.decoded, source=clip.frames.to(res.decoded.dtype), mask=res.edit.blend_mask,
                           options=CompositeOptions(composite=True), outline=res.edit.blend_outline)
    assert torch.equal(res.edited, lit)


def test_ground_truth_reads_the_objects_colour_not_the_backgrounds():
    """The target prompt's colour words: 'green' of 'green grass' is the background's name, not the object's colour
    (before, a yellow ball on green grass rendered a green ball as the truth)."""
    from vp2p_world.demo import ground_truth, load_clip
    from vp2p_world.render import render

    _, scene, _ = load_clip("blue ball bounce green grass", FramesOptions(frames=2), 64)
    truth = ground_truth(scene, "a blue ball bouncing on green grass", "a yellow ball bouncing on green grass")
    assert torch.equal(truth.frames, render(scene.replace(colour="yellow")).frames)
    truth = ground_truth(scene, "a blue ball bouncing on green grass", "a blue ball bouncing on sand")
    assert torch.equal(truth.frames, render(scene.replace(background="sand")).frames)
    assert ground_truth(scene, "a blue ball bouncing on green grass", "a blue ball bouncing on green grass") is None


@pytest.mark.parametrize("module", ["vp2p_world.demo", "vp2p_world.benchmark", "vp2p_world.gen1_benchmark",
                                    "vp2p_world.long_clip_benchmark"])
def test_help_prints_every_option(module, capsys):
    """--help lists every flag with its option's tooltip; a tooltip's '%' ("15-21% more time") crashed argparse."""
    import importlib

    mod = importlib.import_module(module)
    run = mod.parse_args if hasattr(mod, "parse_args") else mod.main
    with pytest.raises(SystemExit) as exit_:
        run(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--guidance" in out


@pytest.mark.parametrize("args, message", [(["--weights", "1,5"], "--weights: temporal_guidance: expected a value in"),
                                           (["--levels", "0,x"], "--levels: expected comma-separated numbers"),
                                           (["--levels", "-1"], "--levels: structure_blur: expected a value in")])
def test_gen1_benchmark_refuses_its_list_flags_before_any_work(args, message, capsys, monkeypatch):
    """w_t and t_s values out of their options' ranges were refused minutes in, after tuning and inversion, with a
    traceback; now by flag, before the model loads."""
    from vp2p_core import pipeline
    from vp2p_world import gen1_benchmark

    monkeypatch.setattr(pipeline.Components, "from_folder", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(SystemExit) as exit_:
        gen1_benchmark.main(args + ["--no-write"])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [(["--cross-replace", "0.2,1.5"], "--cross-replace: cross_replace: expected"),
                                           (["--self-replace", "0.5,x"], "--self-replace: expected comma-separated"),
                                           (["--mask-threshold", ""], "--mask-threshold: expected at least one")])
def test_sweep_refuses_its_grid_flags_before_any_work(args, message, capsys, monkeypatch):
    """The sweep's grid values are checked by their options before the model loads (a typo failed after the
    first case's inversion)."""
    from vp2p_core import pipeline
    from vp2p_world import sweep

    monkeypatch.setattr(pipeline.Components, "from_folder", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(SystemExit) as exit_:
        sweep.main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("module, args, message", [
    ("benchmark", ["--frames", "0"], "--frames: expected a value in [1, 4096], got 0"),
    ("benchmark", ["--cases", "-1"], "--cases: expected a number of cases of 0 or more"),
    ("benchmark", ["--threads", "-1"], "--threads: expected a number of threads of 0 or more"),
    ("benchmark", ["--json", "{tmp}"], "--json: {tmp} is a folder; give a file name"),
    ("sweep", ["--steps", "0"], "--steps: expected a value in [1, 500], got 0"),
    ("sweep", ["--frames", "0"], "--frames: expected a value in [1, 4096], got 0"),
    ("sweep", ["--json", "{tmp}/taken/rows.json"], "--json: {tmp}/taken is a file; give a path in a folder"),
    ("long_clip_benchmark", ["--json", "{tmp}"], "--json: {tmp} is a folder"),
    ("evaluate", ["--grid", "{tmp}/taken/grid.png"], "--grid: {tmp}/taken is a file"),
    ("train", ["--out", "{tmp}/taken"], "--out: {tmp}/taken is a file; give a folder to write into"),
    ("train", ["--out", "{tmp}/m", "--resume", "{tmp}"], "--resume: '{tmp}' has no unet, text_encoder"),
    ("train", ["--out", "{tmp}/m", "--vae-from", "{tmp}"], "--vae-from: '{tmp}' has no config.json"),
    ("train_controlnet", ["--out", "{tmp}/taken"], "--out: {tmp}/taken is a file")])
def test_world_commands_refuse_bad_counts_and_outputs_before_any_work(module, args, message, tmp_path, capsys,
                                                                       monkeypatch):
    """Counts out of range and outputs that the end of a run could not write (a --json into a file's path, a
    folder given as the file) were found after the whole run, or by a traceback after the model loaded; now by
    flag, before any work (exit code 2)."""
    import importlib

    from vp2p_core import pipeline

    monkeypatch.setattr(pipeline.Components, "from_folder", lambda *a, **k: pytest.fail("loaded the model"))
    (tmp_path / "taken").write_text("a file")
    main = importlib.import_module(f"vp2p_world.{module}").main
    extra = ["--no-write"] if module == "benchmark" else []
    with pytest.raises(SystemExit) as exit_:
        main([a.format(tmp=tmp_path) for a in args] + extra)
    assert exit_.value.code == 2 and message.format(tmp=tmp_path) in capsys.readouterr().err


def test_a_frames_folder_of_grey_or_16_bit_images_loads_and_mixed_sizes_are_refused(tmp_path):
    """A folder of grey PNGs (a permute traceback before) and 16-bit ones load as RGB in 0..1; frames of different
    sizes are refused by flag (numpy's stack error before)."""
    import imageio.v3 as iio
    import numpy as np

    from vp2p_core import VP2PInputError
    from vp2p_world.demo import load_clip

    grey = np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) % 256
    iio.imwrite(tmp_path / "0.png", grey.astype(np.uint8))
    iio.imwrite(tmp_path / "1.png", grey * 257)  # 16-bit, the same grey levels
    iio.imwrite(tmp_path / "2.png", np.stack([grey.astype(np.uint8)] * 3 + [np.full_like(grey, 9, np.uint8)], -1))
    frames, scene, _ = load_clip(str(tmp_path), FramesOptions(frames=3), 64)
    assert frames.shape == (3, 64, 64, 3) and scene is None
    assert torch.equal(frames[0], frames[1]) and torch.equal(frames[0], frames[2])
    assert torch.equal(frames[0][..., 0], frames[0][..., 2])
    iio.imwrite(tmp_path / "3.png", np.zeros((41, 48, 3), np.uint8))
    with pytest.raises(VP2PInputError, match=re.escape(f"--clip: {tmp_path} has frames of different sizes")):
        load_clip(str(tmp_path), FramesOptions(frames=4), 64)


def test_the_demo_takes_frames_from_start_frame_at_frame_stride(tmp_path, capsys):
    """--start-frame and --frame-stride (Video Frames' settings) pick a clip's frames from a GIF, read no further
    than the last one, and from a folder; a rendered scene refuses them by flag."""
    import imageio.v3 as iio
    import numpy as np

    from vp2p_world import demo

    levels = [np.full((16, 16, 3), 10 * i, np.uint8) for i in range(12)]
    iio.imwrite(tmp_path / "clip.gif", np.stack(levels), duration=100, loop=0)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, im in enumerate(levels):
        iio.imwrite(folder / f"{i}.png", im)
    pick = FramesOptions(frames=3, start_frame=2, frame_stride=4)  # frames 2, 6 and 10
    for spec in (tmp_path / "clip.gif", folder):
        frames, _, _ = demo.load_clip(str(spec), pick, 64)
        assert [round(float(f.mean()) * 255) for f in frames] == [20, 60, 100], spec
    with pytest.raises(SystemExit) as exit_:
        demo.main(["--start-frame", "1", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "--start-frame, --frame-stride: pick frames of a --clip" in capsys.readouterr().err


def test_run_refuses_frames_it_cannot_edit_before_any_work():
    """``run``'s frames: of a size the VAE's factor does not divide (66 px ran the whole edit and failed at the
    decode), in 0..255 (clamped to white, or 0..509 into the VAE), NaN, none, or not a tensor; and a blend word the
    prompt lacks: each refused by name before the first encode."""
    from vp2p_core import EditOptions, VP2PInputError
    from vp2p_core.pipeline import Components, run

    comps = Components.from_folder(WEIGHTS)
    comps.encode_frames = lambda *a, **k: pytest.fail("encoded the frames")
    src, tgt = "a red ball bouncing on green grass", "a blue ball bouncing on green grass"
    for frames, message in [(torch.rand(2, 66, 64, 3), "frames: expected a height and width divisible by the VAE's "
                                                        "factor 4, got 66x64; crop or scale them (e.g. to 64x64)"),
                            (torch.rand(2, 64, 64, 3) * 255, "frames in 0..255? divide them by 255"),
                            (torch.full((2, 64, 64, 3), float("nan")), "frames: expected values in 0..1, got nan"),
                            (torch.rand(0, 64, 64, 3), "frames: expected RGB frames"),
                            ([[0.5]], "frames: expected RGB frames")]:
        with pytest.raises(VP2PInputError, match=re.escape(message)):
            run(comps, frames, src, tgt)
    with pytest.raises(VP2PInputError, match="blend_words .*'cat' is not in the prompt"):
        run(comps, torch.rand(2, 64, 64, 3), src, tgt, edit=EditOptions(blend_words="cat"))


def test_demo_refuses_an_out_file_and_an_unreadable_clip_before_any_work(tmp_path, capsys, monkeypatch):
    """--out naming a file (the outputs are written after the run) and a clip file no reader takes are refused by
    flag before the model loads; a folder's other files (notes, a .txt) are skipped, not read as frames."""
    from vp2p_core import pipeline
    from vp2p_world import demo

    monkeypatch.setattr(pipeline.Components, "from_folder", lambda *a, **k: pytest.fail("loaded the model"))
    blocked = tmp_path / "taken"
    blocked.write_text("a file")
    broken = tmp_path / "clip.mp4"
    broken.write_bytes(b"not a video")
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a frame")
    for argv, message in [(["--out", str(blocked / "demo")], f"--out: {blocked} is a file"),
                          (["--clip", str(broken)], f"--clip: {broken}: could not be read as a video"),
                          (["--clip", str(folder)], f"--clip: {folder}: has 0 frames; frames 8 from start_frame 0")]:
        with pytest.raises(SystemExit) as exit_:
            demo.main(argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
