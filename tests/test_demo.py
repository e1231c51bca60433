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
    for key in ("inversion_psnr", "background_psnr", "psnr_to_truth", "object_colour_accuracy", "structure_iou"):
        assert key in figures
    assert report["unet_evaluations"]["edit"] == 4 * 3  # source cond + target cond/uncond per step


def test_demo_reports_bad_prompts_clearly(tmp_path, capsys):
    from vp2p_world import demo

    rc = demo.main(["--tune-steps", "0", "--steps", "2", "--frames", "2", "--out", str(tmp_path),
                    "--blend", "cat"])
    assert rc == 2
    assert "blend_words (source prompt): the word 'cat' is not in the prompt" in capsys.readouterr().err
