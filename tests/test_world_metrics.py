"""The small world: renderer determinism and masks, and the benchmark's metric functions on hand-made cases."""
import math

import torch

from vp2p_core import EditOptions
from vp2p_world import metrics
from vp2p_world.render import COLOURS, Scene, render, render_background


def test_renderer_is_deterministic_and_masks_match_pixels():
    scene = Scene(colour="red", shape="square", background="sand", path="circle", seed=3)
    a, b = render(scene), render(scene)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.masks, b.masks)
    obj = torch.tensor(COLOURS["red"])
    inside = a.frames[a.masks]
    assert inside.shape[0] > 0 and (inside - obj).norm(dim=-1).mean() < 0.2
    bg = torch.from_numpy(render_background(scene)).float()
    outside = ~a.masks
    assert ((a.frames - bg).norm(dim=-1)[outside] < 0.5).float().mean() > 0.99


def test_edit_truth_keeps_motion_and_background():
    scene = Scene(colour="red", shape="ball", background="green grass", path="bounce", seed=1)
    blue = render(scene.replace(colour="blue"))
    src = render(scene)
    assert torch.equal(blue.masks, src.masks)  # same motion
    clear = src.coverage == 0  # pixels the object does not touch at all (masks cut anti-aliased edges at 0.5)
    assert torch.equal(blue.frames[clear], src.frames[clear])  # same background
    assert blue.caption == "a blue ball bouncing on green grass"
    moved = render(scene.replace(background="sand"))
    assert torch.equal(moved.masks, src.masks)


def test_psnr_and_iou_on_hand_made_cases():
    x = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    assert metrics.psnr(x, x) == metrics.MAX_PSNR
    y = (x + 0.1).clamp(max=10)  # error 0.1 everywhere -> 20 dB
    assert abs(metrics.psnr(x, y) - 20.0) < 1e-3
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    z = x.clone()
    z[mask] += 0.5
    assert metrics.background_psnr(z, x, mask) == metrics.MAX_PSNR  # change only inside the object
    assert metrics.psnr(z, x) < 20
    assert metrics.mask_iou(mask, mask) == 1.0
    half = torch.zeros_like(mask)
    half[:, :2] = True
    assert abs(metrics.mask_iou(half, mask) - 0.5) < 1e-6
    assert metrics.mask_iou(torch.zeros_like(mask), torch.zeros_like(mask)) == 1.0


def test_colour_shape_and_background_accuracy_on_rendered_truth():
    scene = Scene(colour="red", shape="ball", background="green grass", path="slide", seed=2)
    src, blue, square = render(scene), render(scene.replace(colour="blue")), render(scene.replace(shape="square"))
    assert metrics.object_hue_accuracy(src.frames, src.masks, "red") == 1.0
    assert metrics.object_hue_accuracy(src.frames, src.masks, "blue") == 0.0
    assert metrics.object_hue_accuracy(blue.frames, blue.masks, "blue") == 1.0
    half = torch.cat([blue.frames[:4], src.frames[4:]])  # a known colour change in half the frames
    assert metrics.object_hue_accuracy(half, src.masks, "blue") == 0.5
    assert metrics.shape_accuracy(square.frames, square, src) == 1.0
    assert metrics.shape_accuracy(src.frames, square, src) == 0.0
    sand = render(scene.replace(background="sand"))
    assert metrics.background_accuracy(sand.frames, src.masks, "sand") == 1.0
    assert metrics.background_accuracy(src.frames, src.masks, "sand") == 0.0
    assert metrics.mask_iou(metrics.segment_object(blue.frames, blue), blue.masks) > 0.9


def test_shape_at_any_size_tells_the_right_shape_at_another_size_from_a_wrong_shape():
    """A star in place of a ball drawn at the ball's area (what the shipped model draws) is not the truth's star,
    whose half-extent is the ball's: the accuracy fails it, the size-free figure counts it; the old shape counts
    in neither. The size-free figure judges only frames whose truth reads as the shape asked for."""
    scene = Scene(colour="yellow", shape="ball", background="water", path="bounce", seed=2, size=0.16)
    ball, star = render(scene), render(scene.replace(shape="star"))
    big_star = render(scene.replace(shape="star", size=0.22))
    assert abs(int(big_star.masks.sum()) - int(ball.masks.sum())) < 0.05 * int(ball.masks.sum())  # the ball's area
    assert metrics.shape_accuracy(big_star.frames, star, ball) == 0.0
    assert metrics.shape_any_size_accuracy(big_star.frames, star, "star") == 1.0
    assert metrics.shape_accuracy(star.frames, star, ball) == 1.0
    assert metrics.shape_any_size_accuracy(star.frames, star, "star") == 1.0
    assert metrics.shape_any_size_accuracy(ball.frames, star, "star") == 0.0
    assert metrics.shape_any_size_accuracy(ball.frames, ball, "ball") == 1.0
    assert math.isnan(metrics.shape_any_size_accuracy(ball.frames, star, "ball"))  # no frame of the truth reads as one
    half = torch.cat([big_star.frames[:4], ball.frames[4:]])
    assert metrics.shape_any_size_accuracy(half, star, "star") == 0.5


def test_temporal_consistency():
    scene = Scene(colour="yellow", shape="triangle", background="snow", path="circle", seed=4)
    clip = render(scene)
    tc = metrics.temporal_consistency(clip.frames, clip.masks)
    assert tc["object"] < 0.05 and tc["background"] < 0.01  # steady colour, static background (edges aside)
    flicker = clip.frames.clone()
    flicker[1::2][clip.masks[1::2]] = torch.tensor(COLOURS["blue"])
    assert metrics.temporal_consistency(flicker, clip.masks)["object"] > 0.5
    assert math.isnan(metrics.temporal_consistency(clip.frames[:1], clip.masks[:1])["object"])


def test_benchmark_summary_tables_on_hand_made_rows():
    from vp2p_world import benchmark

    def row(method, case, kind, acc, tc):
        return dict(method=method, case=case, kind=kind, accuracy=acc, psnr_truth=20.0, bg_psnr=float("nan"),
                    iou=0.5, recon_psnr=30.0, tc_object=tc, tc_background=tc / 2, seconds=1.0, evaluations=10)

    rows = [row("p2p_per_frame", "a", "colour", 1.0, 0.02), row("videop2p_fast", "a", "colour", 0.75, 0.01),
            row("p2p_per_frame", "b", "shape", 0.5, 0.30), row("videop2p_fast", "b", "shape", 1.0, 0.05)]
    assert benchmark.successful_cases(rows) == ["a"]  # b failed for one method
    summary = benchmark.summarise(rows)
    assert abs(summary["p2p_per_frame"]["tc_object"] - 0.16) < 1e-9 and math.isnan(summary["p2p_per_frame"]["bg_psnr"])
    md = benchmark.markdown(summary, rows, "cmd", dict(machine="m", cases=2, frames=8, steps=2, guidance=7.5,
                                                      inner_steps=1, lr_scale=1.0, tune_steps=0, tune_seconds=0.0,
                                                      edit=EditOptions().cache_key()))
    assert "| p2p_per_frame | 1.00 | 0.50 |" in md  # accuracy by kind: colour, shape
    assert "| videop2p_fast | 0.0100 | 0.0050 |" in md  # flicker on the case both edited
    # exact backgrounds score the metric's cap: their share and the others' mean beside the plain mean
    capped = [dict(r, bg_psnr=v) for r, v in zip(rows, (100.0, 30.0, 36.0, 100.0))]
    s = benchmark.summarise(capped)
    assert s["p2p_per_frame"]["bg_psnr"] == 68.0 and s["p2p_per_frame"]["bg_exact"] == 0.5
    assert s["p2p_per_frame"]["bg_psnr_inexact"] == 36.0 and s["videop2p_fast"]["bg_psnr_inexact"] == 30.0
    assert "exact backgrounds | background PSNR of the others" in benchmark.markdown(s, capped, "cmd", dict(
        machine="m", cases=2, frames=8, steps=2, guidance=7.5, inner_steps=1, lr_scale=1.0, tune_steps=0,
        tune_seconds=0.0, edit=EditOptions().cache_key()))


def test_benchmark_frame_noise_is_per_frame_seeded_and_off_at_zero():
    from vp2p_world import benchmark

    clip = render(Scene(colour="red", shape="ball", background="sand", seed=1, frames=4)).frames
    assert benchmark.noisy(clip, 0.0, 1) is clip
    a, b = benchmark.noisy(clip, 0.03, 7), benchmark.noisy(clip, 0.03, 7)
    assert torch.equal(a, b) and 0 <= float(a.min()) and float(a.max()) <= 1
    diff = a - clip
    assert 0.02 < float(diff.std()) < 0.04
    assert not torch.allclose(diff[0], diff[1])  # every frame its own noise


def test_seam_ratio_on_hand_made_clips():
    from vp2p_core.context import ContextWindows
    from vp2p_core.options import ContextOptions

    ws = ContextWindows(ContextOptions(context_length=4, context_overlap=1)).windows(10)  # [0-3] [3-6] [6-9]
    # windows change between frames 2|3, 3|4, 5|6, 6|7
    assert metrics.boundary_pairs(ws, 10) == [False, False, True, True, False, True, True, False, False]
    ramp = torch.arange(10.0).view(10, 1, 1) * torch.ones(10, 4, 4)  # steady motion: one unit per frame
    assert metrics.seam_ratio(ramp, ws) == 1.0
    jump = ramp.clone()
    jump[4:] += 3.0  # a jump where the second window takes over: 4 units on one of 4 boundary pairs
    assert metrics.seam_ratio(jump, ws) == (1 + 1 + 1 + 4) / 4


def test_background_psnr_outside_the_object_region_scores_the_truth_exactly():
    """The rendered truth of a recolour equals the source wherever no object touches a pixel, so measured outside
    ``object_region`` it scores MAX_PSNR; outside the masks (coverage > 0.5) its anti-aliased rim counted."""
    from vp2p_world.render import Scene, render
    src = render(Scene(colour="red", shape="ball", frames=3, seed=4, camera="pan"))
    blue = render(src.scene.replace(colour="blue"))
    region = metrics.object_region(src, blue)
    assert torch.equal(region, (src.coverage > 0) | (blue.coverage > 0)) and region.any()
    assert (region & ~(src.masks | blue.masks)).any(), "the rim: touched, but outside the masks"
    assert metrics.background_psnr(blue.frames, src.frames, region) == metrics.MAX_PSNR
    assert metrics.background_psnr(blue.frames, src.frames, src.masks | blue.masks) < 45
