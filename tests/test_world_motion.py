"""The small world in motion: camera pan/zoom over a world bigger than the frame, lighting drift and flicker,
objects that grow or shrink, a foreground occluder, textured backgrounds, long clips; and the exact known
motion (``Clip.flow`` / ``Clip.warp`` / ``Clip.valid``) that the temporal metrics warp with.

The first test pins today's default rendering bit for bit: the shipped model was trained on those clips and
the benchmarks reproduce on them, so a default ``Scene`` must keep rendering exactly what it did before the
world could move (hashes recorded from the renderer before motion existed).
"""
import hashlib

import numpy as np
import pytest
import torch
from one_thread import one_thread  # noqa: F401  (autouse)

from vp2p_world.render import (BACKGROUNDS, COLOURS, PATHS, SHAPES, Scene, random_scene, render, render_background,
                               trajectory)

# (scene, sha256[:16] of frames, masks, coverage, trajectory, static plate and caption), recorded before the
# world could move (commit 470c16c's renderer, numpy 2.4 on x86-64: numpy's sin/cos decide the last bits, so
# another numpy or CPU may need the hashes recorded again from that commit)
DEFAULT_HASHES = [
    (dict(path='slide'), 'c4a5a7a898a547d7'),
    (dict(colour='yellow', background='water', path='circle', seed=1), 'cba42bea9080f628'),
    (dict(colour='blue', seed=2), '90c57d794341f684'),
    (dict(colour='purple', background='snow', path='slide', seed=3), '71623a46c8416059'),
    (dict(shape='square', colour='yellow', path='circle', seed=4), '312f8dba2653a6a9'),
    (dict(shape='square', colour='green', background='snow', seed=5), '9c06011fc3417093'),
    (dict(shape='square', colour='purple', background='sand', path='slide', seed=6), 'dcdf5f4d9e742e79'),
    (dict(shape='triangle', background='snow', path='circle', seed=7), 'a96e01f68c3096e3'),
    (dict(shape='triangle', colour='green', background='sand', seed=8), '311b7793c1f744af'),
    (dict(shape='triangle', colour='blue', background='gray road', path='slide', seed=9), '122c271eb5a1f3e1'),
    (dict(shape='star', background='sand', path='circle', seed=10), 'adae01c4607fa1c8'),
    (dict(shape='star', colour='yellow', background='gray road', seed=11), 'a6b709b5214d0e59'),
    (dict(shape='star', colour='blue', background='water', path='slide', seed=12), '2e7bc22e8285c655'),
    (dict(shape='star', colour='purple', background='gray road', path='circle', seed=13), 'cfabe12c53a430d3'),
    (dict(), 'd4c859855c20c11d'),
    (dict(frames=1), '2577a2f43346bc86'),
    (dict(size=0.12, seed=5, frames=16), 'aadfa7e2728c00a2'),
    (dict(path='circle', frames=32, resolution=48), '7437116ca538d825'),
    (dict(shape='star', background='water', size=0.3, resolution=96), '8d2e8dc906762537'),
    (dict(shape='triangle', background='snow', size=0.03), '49cfbc21aa93aea6'),
    (dict(shape='star', colour='blue', background='water', path='slide', size=0.16286814667553362,
          seed=161576974, frames=4), '198d6dcf2d454167'),
    (dict(background='gray road', size=0.2024645043037026, seed=1960127675, frames=4), '5dacb9a270105ce0'),
    (dict(shape='star', colour='blue', background='snow', size=0.22545506966514378, seed=595598245, frames=4),
     'c42c7cfc15df9244'),
]


def _digest(scene: Scene) -> str:
    clip = render(scene)
    h = hashlib.sha256()
    for a in (clip.frames.numpy(), clip.masks.numpy(), clip.coverage.numpy(), trajectory(scene),
              render_background(scene)):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(clip.caption.encode())
    return h.hexdigest()[:16]


def test_default_scenes_render_bit_identical_to_before_motion():
    rng = np.random.default_rng(0)
    drawn = [random_scene(rng, frames=4) for _ in range(3)]  # the training pool's draw: same scenes, same bits
    scenes = [Scene(**kw) for kw, _ in DEFAULT_HASHES[:-3]] + drawn
    assert [Scene(**kw) for kw, _ in DEFAULT_HASHES[-3:]] == drawn
    got = [_digest(s) for s in scenes]
    assert got == [h for _, h in DEFAULT_HASHES]
    # the hashed scenes reach every shape, colour, background and path
    assert {s.shape for s in scenes} == set(SHAPES) and {s.colour for s in scenes} == set(COLOURS)
    assert {s.background for s in scenes} == set(BACKGROUNDS) and {s.path for s in scenes} == set(PATHS)


# ---------------------------------------------------------------------------------------------- the world in motion

ONE = 1 / 255


def _change(clip, predicted):
    """Mean change from ``predicted`` to frame t+1 on the background pixels the warp predicts exactly and that are
    background in frame t too."""
    keep = clip.valid(region="background") & (clip.coverage[:-1] == 0) & (clip.occlusion[:-1] == 0)
    return float((clip.frames[1:] - predicted).abs().amax(-1)[keep].mean())


def test_motion_is_off_by_default_and_a_still_clip_knows_it():
    assert Scene() == Scene(camera="none", lighting="none", growth=1.0, occluder=False, texture=False)
    clip = render(Scene(background="water", seed=4))
    assert clip.scene.still
    assert torch.equal(clip.plates, torch.from_numpy(render_background(clip.scene)).float().expand(8, -1, -1, -1))
    assert torch.equal(clip.gains, torch.ones(8, 3)) and not clip.occlusion.any()
    ident = torch.stack(torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="xy"), -1)
    bg = clip.valid(region="background")
    assert torch.allclose(clip.flow()[bg], ident.expand(7, -1, -1, -1)[bg], atol=1e-5)  # a still camera
    assert torch.allclose(clip.warp(clip.frames)[bg], clip.frames[1:][bg], atol=1e-6)


@pytest.mark.parametrize("camera", ["pan", "zoom", "pan+zoom"])
@pytest.mark.parametrize("texture", [False, True])
def test_camera_motion_warps_frame_t_onto_t_plus_1_exactly(camera, texture):
    for bg, seed in [("green grass", 0), ("water", 1), ("sand", 2), ("gray road", 3), ("snow", 4)]:
        clip = render(Scene(background=bg, camera=camera, texture=texture, seed=seed, frames=8, shape="star"))
        valid = clip.valid(region="background")
        assert float(valid.float().mean()) > 0.6  # most of the frame: only borders, object and edges left out
        err = (clip.warp(clip.frames) - clip.frames[1:]).abs().amax(-1)[valid]
        assert float(err.max()) < ONE, (bg, float(err.max()) * 255)
        if texture or bg != "gray road":  # a plain road looks the same wherever the camera is
            # the camera really moves the background, and its known motion explains the change
            unwarped, warped = _change(clip, clip.frames[:-1]), _change(clip, clip.warp(clip.frames))
            assert unwarped > (0.4 if texture else 0.1) * ONE and warped < unwarped / 5, (unwarped * 255, warped * 255)
        still = torch.stack(torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="xy"), -1)
        assert (clip.flow()[valid] - still.expand(7, -1, -1, -1)[valid]).norm(dim=-1).mean() > 0.5


def test_pan_is_a_translation_and_zoom_a_scaling_about_the_centre():
    from vp2p_world.render import camera_path

    pan = render(Scene(camera="pan", seed=3))
    zoom, centre = camera_path(pan.scene)
    assert np.all(zoom == 1) and np.ptp(centre[:, 0]) + np.ptp(centre[:, 1]) > 0.15 * 64
    shift = (pan.flow(2) - torch.stack(torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="xy"), -1))
    v = pan.valid(2, "background")
    expect = torch.tensor(centre[3] - centre[2], dtype=torch.float32)  # the background moves against the camera
    assert torch.allclose(shift[v], expect.expand(int(v.sum()), 2), atol=1e-4)
    z = render(Scene(camera="zoom", seed=3))
    zoom, centre = camera_path(z.scene)
    assert np.all(centre == 32) and 0.15 <= abs(zoom[-1] - zoom[0]) <= 0.25 and zoom.max() == 1
    f = z.flow(0)
    ratio = (f[10, 60, 0] - f[10, 3, 0]) / 57  # source spacing per pixel of frame t+1: zoom[1] / zoom[0]
    assert abs(float(ratio) - zoom[1] / zoom[0]) < 1e-5


@pytest.mark.parametrize("lighting", ["drift", "flicker"])
def test_lighting_changes_over_the_clip_and_warps_exactly_after_compensation(lighting):
    scene = Scene(background="sand", camera="pan+zoom", lighting=lighting, texture=True, seed=6, frames=16)
    clip, unlit = render(scene), render(scene.replace(lighting="none"))
    g = clip.gains
    assert float(g.max()) <= 1 and float(g.min()) > 0.6
    assert torch.allclose(clip.frames, unlit.frames * g[:, None, None, :], atol=1e-6)  # a gain per frame and channel
    assert float((g[-1] - g[0]).abs().max()) > 0.1  # brightness drifts
    tint = g / g.mean(-1, keepdim=True)
    assert float((tint[-1] - tint[0]).abs().max()) > 0.01  # and the light's colour
    steps = torch.diff(g.mean(-1))
    assert bool((steps <= 0).all() or (steps >= 0).all()) == (lighting == "drift")  # flicker: not monotone
    assert torch.equal(clip.masks, unlit.masks)
    valid = clip.valid(region="frame")
    err = (clip.warp(clip.frames) - clip.frames[1:]).abs().amax(-1)[valid]
    assert float(err.max()) < ONE
    raw = (clip.warp(clip.frames) / (g[1:] / g[:-1])[:, None, None, :] - clip.frames[1:]).abs().amax(-1)[valid]
    assert float(raw.max()) > 2 * ONE  # without the known light the warp is off


def test_object_and_occluder_move_exactly_too():
    scene = Scene(shape="square", colour="yellow", background="water", camera="pan", lighting="drift",
                  occluder=True, growth=1.4, size=0.15, seed=2, frames=16)
    clip = render(scene)
    err = (clip.warp(clip.frames) - clip.frames[1:]).abs().amax(-1)
    obj = clip.valid(region="object")
    assert int(obj.sum()) > 16 * 100 and float(err[obj].max()) < 1e-5  # flat colour under its own motion
    occ = clip.valid() & ~clip.valid(region="object") & ~clip.valid(region="background")
    assert int(occ.sum()) > 100 and float(err[occ].max()) < 1e-5
    assert float(err[clip.valid()].max()) < ONE


def test_occluder_crosses_the_object_and_is_not_in_its_mask():
    from vp2p_world.render import OCCLUDER_COLOUR, occluder_path

    scene = Scene(colour="green", background="green grass", path="slide", occluder=True, seed=8, frames=16)
    clip, bare = render(scene), render(scene.replace(occluder=False))
    occ = clip.occlusion
    assert not (clip.masks & (occ >= 0.5)).any()
    assert torch.equal(clip.masks, (bare.coverage * (1 - occ)) > 0.5)
    assert torch.allclose(clip.coverage, bare.coverage * (1 - occ), atol=1e-6)
    hidden = bare.masks & (occ == 1)
    assert int(hidden[8].sum()) > 20  # mid-clip it stands in front of the object
    assert torch.allclose(clip.frames[occ == 1], torch.tensor(OCCLUDER_COLOUR), atol=1e-6)
    assert bool(clip.masks.flatten(1).any(1).all())  # never hides all of it
    x, width = occluder_path(scene)
    assert abs(np.ptp(x) - 64) < 1e-9 and width < 2 * 0.2 * 64  # a frame width over the clip, narrower than it
    for edit in (dict(colour="blue"), dict(shape="star"), dict(background="snow")):
        truth = render(scene.replace(**edit))
        assert torch.equal(truth.occlusion, occ)  # the truth of an edit keeps the occluder
        assert torch.equal(truth.frames[occ == 1], clip.frames[occ == 1])
    blue = render(scene.replace(colour="blue"))
    assert torch.equal(blue.masks, clip.masks)
    assert torch.equal(blue.frames[clip.coverage == 0], clip.frames[clip.coverage == 0])


def test_edit_truth_keeps_camera_light_occluder_and_caption():
    scene = Scene(colour="red", background="gray road", camera="pan+zoom", lighting="flicker", occluder=True,
                  texture=True, growth=0.7, seed=9, frames=16)
    src, blue = render(scene), render(scene.replace(colour="blue"))
    assert torch.equal(src.masks, blue.masks) and torch.equal(src.plates, blue.plates)
    assert torch.equal(src.frames[src.coverage == 0], blue.frames[src.coverage == 0])
    assert torch.equal(src.flow(), blue.flow()) and torch.equal(src.gains, blue.gains)
    assert src.caption == render(Scene(colour="red", background="gray road", seed=9)).caption
    assert blue.caption == "a blue ball bouncing on gray road"
    # the plates are the frames without the object, exactly
    assert torch.equal(src.frames[src.coverage == 0], src.plates[src.coverage == 0])


@pytest.mark.parametrize("frames", [8, 16, 32])
def test_clips_of_8_to_32_frames(frames):
    scene = Scene(shape="triangle", colour="purple", background="snow", path="circle", camera="pan+zoom",
                  lighting="flicker", occluder=True, texture=True, growth=1.3, size=0.15, seed=frames, frames=frames)
    clip = render(scene)
    assert clip.frames.shape == (frames, 64, 64, 3) and clip.masks.shape == (frames, 64, 64)
    assert clip.flow().shape == (frames - 1, 64, 64, 2) and clip.valid().shape == (frames - 1, 64, 64)
    assert clip.warp(clip.frames).shape == (frames - 1, 64, 64, 3) and clip.warp(clip.frames, 3).shape == (64, 64, 3)
    assert torch.equal(clip.warp(clip.frames, 3), clip.warp(clip.frames)[3])
    assert bool(clip.masks.flatten(1).any(1).all())
    err = (clip.warp(clip.frames) - clip.frames[1:]).abs().amax(-1)[clip.valid()]
    assert float(err.max()) < ONE
    with pytest.raises(ValueError, match="pair"):
        clip.flow(frames - 1)


@pytest.mark.parametrize("growth", [1.5, 0.6])
def test_growth_scales_the_mask_area_as_the_square(growth):
    from vp2p_world.render import object_halves

    scene = Scene(shape="ball", path="slide", size=0.18 if growth < 1 else 0.12, growth=growth, seed=1, frames=16)
    clip = render(scene)
    halves = object_halves(scene)
    assert abs(halves[-1] / halves[0] - growth) < 1e-12 and np.allclose(np.diff(halves), np.diff(halves)[0])
    area = clip.coverage.flatten(1).sum(1).numpy()  # the ball's area, anti-aliased
    assert abs(area[-1] / area[0] - growth ** 2) < 0.02 * growth ** 2
    assert np.allclose(area, np.pi * halves ** 2, rtol=0.01)
    assert abs(clip.masks[-1].sum() / clip.masks[0].sum() - growth ** 2) < 0.05 * growth ** 2
    with pytest.raises(ValueError, match="growth"):
        Scene(size=0.25, growth=1.5)  # 0.375 of the frame would not fit


def test_texture_adds_detail_and_objects_stay_segmentable():
    from vp2p_world import metrics

    for bg in BACKGROUNDS:
        flat, rich = render_background(Scene(background=bg)), render_background(Scene(background=bg, texture=True))
        detail = rich - flat
        assert detail.std() > 0.01 and np.abs(detail).max() > 0.04, bg  # visibly more than before
        assert not np.array_equal(rich, flat)
    for colour in COLOURS:
        scene = Scene(colour=colour, background="green grass", camera="pan", lighting="drift", occluder=True,
                      texture=True, seed=2)
        truth = render(scene)
        seg = metrics.segment_object(truth.frames, truth)
        assert metrics.mask_iou(seg, truth.masks) > 0.9, colour
        assert not (seg & (truth.occlusion == 1)).any()


def test_bad_motion_options_are_refused_by_name():
    with pytest.raises(ValueError, match="camera"):
        Scene(camera="tilt")
    with pytest.raises(ValueError, match="lighting"):
        Scene(lighting="strobe")
    with pytest.raises(ValueError, match="growth"):
        Scene(growth=0.0)


def test_random_scene_takes_motion_without_drawing_more():
    a, b = np.random.default_rng(4), np.random.default_rng(4)
    still = random_scene(a, frames=16)
    moving = random_scene(b, frames=16, camera="pan", lighting="drift", occluder=True, texture=True)
    assert moving == still.replace(camera="pan", lighting="drift", occluder=True, texture=True)
    assert a.random() == b.random()
