"""Temporal metrics under motion (vp2p_world.metrics.warp_error, normalised_warp_error, flicker) on hand-made
clips with known answers: the truth scores 0 however its camera and light move, per-frame noise of a known
sigma gives that sigma, a known flash gives its size, and an edit that ignores the known motion or light shows."""
import math

import pytest
import torch
from one_thread import one_thread  # noqa: F401  (autouse)

from vp2p_world import metrics
from vp2p_world.render import Scene, render

MOVING = Scene(colour="blue", shape="star", background="sand", camera="pan+zoom", lighting="flicker",
               occluder=True, texture=True, growth=1.3, size=0.15, seed=2, frames=16)


@pytest.fixture(scope="module")
def truth():
    return render(MOVING)


def _noisy(frames, sigma, seed=0):
    return frames + sigma * torch.randn(frames.shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scene", [MOVING, Scene(), MOVING.replace(lighting="drift", camera="zoom")])
def test_the_truth_scores_zero(scene):
    truth = render(scene)
    for region in ("frame", "background", "object"):
        assert metrics.warp_error(truth.frames, truth, region) == 0.0
        assert metrics.normalised_warp_error(truth.frames, truth, region) == 0.0
        assert metrics.warp_error(truth.frames, truth, region, relative=False) < 0.5 / 255  # the warp's own error
    assert metrics.flicker(truth.frames, truth) == {"object": 0.0, "background": 0.0}


@pytest.mark.parametrize("sigma", [0.01, 0.04])
def test_per_frame_noise_gives_its_sigma(truth, sigma):
    noisy = _noisy(truth.frames, sigma)
    for region in ("frame", "background", "object"):
        assert abs(metrics.normalised_warp_error(noisy, truth, region) - sigma) < 0.04 * sigma, region
        # the raw excess: sigma * sqrt(1 + r^2 sum w^2), between sqrt(1.25) and sqrt(2) sigma under sub-pixel motion
        assert 1.1 * sigma < metrics.warp_error(noisy, truth, region) < 1.45 * sigma
    # a still world moves by whole pixels (none): the excess is exactly sqrt(2) sigma
    still = render(Scene(seed=3, frames=16))
    got = metrics.warp_error(_noisy(still.frames, sigma), still, "background")
    assert abs(got - math.sqrt(2) * sigma) < 0.04 * sigma
    # noise is not flicker: the means over thousands of pixels barely move
    fl = metrics.flicker(noisy, truth)
    assert fl["background"] < 0.1 * sigma and fl["object"] < 0.3 * sigma


def test_a_known_flash_gives_its_size(truth):
    delta = torch.tensor([0.03, -0.04, 0.0])  # RGB distance 0.05, in the light of each frame
    flash = truth.frames.clone()
    flash[1::2] += delta * truth.gains[1::2, None, None, :]
    fl = metrics.flicker(flash, truth)
    assert abs(fl["object"] - 0.05) < 1e-4 and abs(fl["background"] - 0.05) < 1e-4
    assert metrics.normalised_warp_error(flash, truth, "background") > 0.015
    only_object = truth.frames.clone()
    only_object[1::2][truth.masks[1::2]] += 0.1
    fl = metrics.flicker(only_object, truth)
    assert fl["object"] > 0.1 and fl["background"] == 0.0


def test_the_lights_drift_is_not_flicker_but_ignoring_it_is():
    scene = Scene(colour="blue", shape="ball", background="green grass", lighting="drift", camera="pan", seed=4,
                  frames=16)
    truth, other = render(scene), render(scene.replace(colour="purple"))
    drift = metrics.temporal_consistency(other.frames, truth.masks)
    assert drift["object"] > 0.005 and drift["background"] > 0.005  # raw frame-to-frame change: the light and camera
    fl = metrics.flicker(other.frames, truth)  # another colour, lit and moved as the truth: steady
    assert fl["object"] < 1e-5 and fl["background"] < 1e-6
    assert metrics.warp_error(other.frames, truth, "background") < 1e-6
    unlit = truth.frames / truth.gains[:, None, None, :]  # an edit that keeps the first frame's light throughout
    fl = metrics.flicker(unlit, truth)
    assert fl["object"] > 0.005 and fl["background"] > 0.005


def test_a_background_that_does_not_follow_the_camera_shows(truth):
    still_camera = render(MOVING.replace(camera="none"))
    assert metrics.warp_error(still_camera.frames, truth, "background") > 0.003
    assert metrics.warp_error(still_camera.frames, truth, "object") < 1e-6  # the object still moves as it should


def test_no_pairs_no_number():
    one = render(Scene(frames=1))
    assert math.isnan(metrics.warp_error(one.frames, one))
    assert math.isnan(metrics.normalised_warp_error(one.frames, one))
    fl = metrics.flicker(one.frames, one)
    assert math.isnan(fl["object"]) and math.isnan(fl["background"])
