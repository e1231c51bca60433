"""The README's main command, end to end on the shipped model, with fewer steps."""
import json
from pathlib import Path

import pytest
import torch

WEIGHTS = Path(__file__).resolve().parents[1] / "vp2p_world" / "weights"
pytestmark = pytest.mark.skipif(not (WEIGHTS / "unet").is_dir(), reason="shipped model not trained yet")


def test_demo_runs_end_to_end(tmp_path, capsys):
    from vp2p_world import demo

    torch.manual_seed(0)
    rc = demo.main(["--tune-steps", "2", "--steps", "4", "--frames", "4", "--out", str(tmp_path), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target"] == "a blue ball bouncing on green grass"
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
    (["--frames", "12", "--context-schedule", "looped_uniform"], "looped_uniform needs a clip of at least one "
                                                                 "window (context_length 16), but --frames has 12"),
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

    _, scene, _ = load_clip("blue ball bounce green grass", 2, 64)
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
                          (["--clip", str(broken)], f"--clip: {broken} could not be read as a video"),
                          (["--clip", str(folder)], f"--clip: {folder} has 0 frames, fewer than --frames 8")]:
        with pytest.raises(SystemExit) as exit_:
            demo.main(argv)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
