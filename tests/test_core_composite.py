"""The local-blend mask (dilation, smoothing over frames, union of source and target words) and compositing the
decoded edit over the source frames, on hand-made masks."""
from types import SimpleNamespace

import pytest
import torch

from vp2p_core import (AttentionController, CompositeOptions, EditOptions, VP2PInputError, build_edit_plan,
                       change_weight, composite_alpha, composite_frames, composite_mask)
from vp2p_core.composite import (background_distance, dilate_mask, feather_mask, image_mask, occluder_mask, refine_mask,
                                  smooth_mask_frames)
from vp2p_core.pipeline import vae_factor
from vp2p_world.tiny import ToyTokenizer

F_, H, W = 4, 16, 16


def square(size=H, top=5, left=6, side=4, frames=1) -> torch.Tensor:
    m = torch.zeros(frames, size, size)
    m[:, top:top + side, left:left + side] = 1
    return m


@pytest.mark.parametrize("d", [0, 1, 3])
def test_dilation_grows_a_square_by_exactly_d_on_each_side(d):
    out = dilate_mask(square(), d)
    assert torch.equal(out, square(top=5 - d, left=6 - d, side=4 + 2 * d))
    assert torch.equal(dilate_mask(square(), 0), square())


def test_dilation_stops_at_the_frame_and_the_feather_stays_inside_the_dilated_region():
    edge = square(top=0, left=0, side=3)
    assert torch.equal(dilate_mask(edge, 2), square(top=0, left=0, side=5))
    grown = dilate_mask(square(), 3)
    soft = feather_mask(grown, 2)
    assert torch.equal(soft == 0, grown == 0), "the feather reaches past the dilated mask"
    assert torch.equal(soft[grown.bool()].min(), torch.tensor(1 / 3))
    assert soft[square().bool()].eq(1).all(), "feather <= dilation keeps the undilated mask whole"
    assert torch.equal(feather_mask(grown, 0), grown)


def test_temporal_smoothing_fills_a_one_frame_hole_and_drops_a_speck():
    m = square(frames=5)
    m[2] = 0  # the attention missed the object on one frame
    m[3, 0, 0] = 1  # a one-frame speck
    m[4, 15, 15] = 1  # a speck on the last frame: a tie between the two frames inside its window, kept
    out = smooth_mask_frames(m, 1)
    expected = square(frames=5)
    expected[4, 15, 15] = 1
    assert torch.equal(out, expected), "the hole is not filled or the speck not dropped"
    assert torch.equal(smooth_mask_frames(m, 0), m)
    ends = torch.tensor([0.0, 1, 1, 1, 0])[:, None, None]  # the attention missed the first and the last frame
    assert smooth_mask_frames(ends, 1).flatten().tolist() == [0, 1, 1, 1, 0]  # 1 of the 2 frames inside: a tie
    # radius 2: frames 0-2 and 2-4 are inside the end frames' windows, 2 of 3 on (the end frame as padding: 2 of 5)
    assert smooth_mask_frames(ends, 2).flatten().tolist() == [1, 1, 1, 1, 1], "an end frame's hole is not filled"
    assert smooth_mask_frames(ends, 8).flatten().tolist() == [1, 1, 1, 1, 1]  # the whole clip: 3 of 5
    clips = torch.stack([m, m])[:, :, None]  # [n, F, 1, h, w]: frames on dim 1
    assert torch.equal(smooth_mask_frames(clips, 1, frame_dim=1)[1, :, 0], out)


# ---------------------------------------------------------------------------------------------------------
# LocalBlend's mask in the controller

def controller(options: EditOptions, factor: int = 8, source="a red ball on grass", target="a blue cube on grass"):
    """A controller whose summed maps are hand-made: the source word 'ball' attends to a square on the left,
    the target word 'cube' to a square on the right (8x8 maps on a 16x16 latent)."""
    tok = ToyTokenizer()
    plan = build_edit_plan(tok, source, target, options=options)
    ctrl = AttentionController(plan, num_steps=10, num_frames=F_, latent_hw=(H, W), blend_layers=[],
                               vae_factor=factor)
    maps = torch.zeros(2, F_, 8, 8, 77)
    maps[0, :, 2:4, 1:3, plan.blend.source_tokens] = 1.0
    maps[1, :, 2:4, 5:7, plan.blend.target_tokens[0]] = 1.0
    ctrl.map_sum = maps.flatten(2, 3)
    return ctrl


def reference_mask(ctrl) -> torch.Tensor:
    """The LocalBlend mask as it was before dilation and smoothing existed."""
    c, f, n, _ = ctrl.map_sum.shape
    maps = (ctrl.map_sum * ctrl.blend_words[:, None, None, :]).sum(-1).view(c, f, 8, 8)
    maps = torch.nn.functional.max_pool2d(maps, (3, 3), (1, 1), padding=(1, 1))
    mask = torch.nn.functional.interpolate(maps, size=(H, W))
    mask = mask / mask.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    mask = mask.gt(0.3)
    return (mask[:1] | mask).unsqueeze(2).float()


def blend(ctrl):
    b = ctrl.plan.blend
    return ctrl.blend_mask(b.threshold, dilation=b.dilation, smoothing=b.smoothing, region=b.region,
                           source_only=b.source_only)


def test_blend_mask_defaults_are_the_identity_and_the_union_of_both_words():
    opts = EditOptions(blend_words="ball", blend_target_words="cube")
    assert opts.blend_dilation == 0 and opts.blend_smoothing == 0
    ctrl = controller(opts)
    mask = blend(ctrl)
    assert torch.equal(mask, reference_mask(ctrl))
    # the cube's row covers the ball's region (where the ball must go) and the cube's (where it must appear)
    assert mask[1, :, 0, 4:8, 2:6].eq(1).all() and mask[1, :, 0, 4:8, 10:14].eq(1).all()
    assert mask[0, :, 0, :, 10:].eq(0).all(), "the source row is the source words' own mask"
    # end_step blends with that mask, as before
    ctrl.cur_step = ctrl.blend_start
    lat = torch.randn(2, F_, 4, H, W)
    out = ctrl.end_step(lat)
    ref = reference_mask(ctrl)
    assert torch.equal(out, lat[:1] + ref * (lat - lat[:1])) and torch.equal(ctrl.last_mask, ref[1:])


def test_local_blend_waits_for_blend_start():
    """blend_start 0.5 of 10 steps: the first five steps leave the latents as the sampler made them (the target
    branch free to form), the sixth blends them through the mask."""
    ctrl = controller(EditOptions(blend_words="ball", blend_target_words="cube", blend_start=0.5))
    assert ctrl.blend_start == 5
    lat = torch.randn(2, F_, 4, H, W, generator=torch.Generator().manual_seed(4))
    for step in range(5):
        assert torch.equal(ctrl.end_step(lat), lat) and ctrl.last_mask is None, f"blended at step {step}"
    ref = reference_mask(ctrl)
    assert torch.equal(ctrl.end_step(lat), lat[:1] + ref * (lat - lat[:1])) and ctrl.cur_step == 6


@pytest.mark.parametrize("pixels,factor,latent", [(16, 8, 2), (9, 8, 2), (16, 4, 4), (1, 4, 1)])
def test_blend_dilation_is_in_image_pixels(pixels, factor, latent):
    opts = EditOptions(blend_words="ball", blend_target_words="cube", blend_dilation=pixels)
    ctrl = controller(opts, factor=factor)
    assert torch.equal(blend(ctrl), dilate_mask(reference_mask(ctrl), latent))


def test_blend_smoothing_fills_a_frame_the_attention_missed():
    opts = EditOptions(blend_words="ball", blend_target_words="cube", blend_smoothing=1)
    ctrl = controller(opts)
    full = reference_mask(ctrl)
    ctrl.map_sum.view(2, F_, 8, 8, 77)[:, 1] = 0  # no attention on frame 1
    assert reference_mask(ctrl)[:, 1].eq(0).all()
    assert torch.equal(blend(ctrl), full)


def test_blend_region_auto_is_the_outline_for_a_recolour_and_grown_for_a_new_shape():
    tok = ToyTokenizer()
    region = lambda target, **kw: build_edit_plan(tok, "a red ball on grass", target,
                                                  options=EditOptions(blend_words="ball", **kw)).blend.region
    assert region("a blue ball on grass") == "outline"
    assert region("a blue cube on grass", blend_target_words="cube") == "grown"
    assert region("a blue ball on grass", blend_target_words="BALL") == "outline"
    assert region("a blue ball on grass", blend_region="grown") == "grown"
    assert region("a blue cube on grass", blend_target_words="cube", blend_region="outline") == "outline"
    with pytest.raises(VP2PInputError, match="blend_region"):
        EditOptions(blend_words="ball", blend_region="box")


def test_blend_from_auto_takes_the_source_words_alone_for_a_recolour_and_both_for_a_new_shape():
    tok = ToyTokenizer()
    only = lambda target, **kw: build_edit_plan(tok, "a red ball on grass", target,
                                                options=EditOptions(blend_words="ball", **kw)).blend.source_only
    assert only("a blue ball on grass") and only("a blue ball on grass", blend_target_words="BALL")
    assert not only("a blue cube on grass", blend_target_words="cube")
    assert not only("a blue ball on grass", blend_from="both")
    assert only("a blue cube on grass", blend_target_words="cube", blend_from="source")
    with pytest.raises(VP2PInputError, match="blend_from"):
        EditOptions(blend_words="ball", blend_from="target")
    # the target's attention lies beside the source's (a drifting target branch): with source_only every row is
    # the source's mask, with both the target's row adds the drifted place
    ctrl = controller(EditOptions(blend_words="ball", blend_target_words="cube", blend_from="source"))
    mask = blend(ctrl)
    both = ctrl.blend_mask(0.3, region=ctrl.plan.blend.region)
    assert torch.equal(mask[1], mask[0]) and torch.equal(mask[0], both[0])
    assert mask[1, :, 0, :, 10:].eq(0).all() and both[1, :, 0, :, 10:].eq(1).any()
    # and the sampler's LocalBlend step uses it
    ctrl.cur_step = ctrl.blend_start
    lat = torch.randn(2, F_, 4, H, W)
    out = ctrl.end_step(lat)
    assert torch.equal(ctrl.last_mask, mask[1:]) and torch.equal(out, lat[:1] + mask * (lat - lat[:1]))


def test_outline_mask_is_exactly_the_attended_cells_and_grown_adds_a_cell_around_them():
    opts = EditOptions(blend_words="ball")
    ctrl = controller(opts, target="a blue ball on grass")
    assert ctrl.plan.blend.region == "outline"
    ctrl.map_sum.view(2, F_, 8, 8, 77)[1] = ctrl.map_sum.view(2, F_, 8, 8, 77)[0]  # the target's ball: same cells
    block = torch.zeros(2, F_, 1, H, W)
    block[..., 4:8, 2:6] = 1  # attention cells 2:4 x 1:3, two latent pixels each
    assert torch.equal(blend(ctrl), block)
    ctrl.plan.blend.region = "grown"
    grown = blend(ctrl)
    assert torch.equal(grown, dilate_mask(block, 2)), "the reference's mask: one 2-px cell more on every side"
    assert grown.sum() == 4 * block.sum()


def test_edit_mask_of_a_grown_blend_is_the_two_outlines_and_of_an_outline_blend_the_blend():
    # a ball that becomes a cube beside it: the blend is grown (room for the new shape), the exported mask the two
    # objects' outlines, so the composite keeps the source in the rest of the grown box
    ctrl = controller(EditOptions(blend_words="ball", blend_target_words="cube"))
    assert ctrl.plan.blend.region == "grown" and ctrl.edit_mask() is None, "no mask before the blend has run"
    ctrl.cur_step = ctrl.blend_start
    ctrl.end_step(torch.randn(2, F_, 4, H, W))
    outlines = torch.zeros(1, F_, 1, H, W)
    outlines[..., 4:8, 2:6] = 1  # the ball's cells
    outlines[..., 4:8, 10:14] = 1  # the cube's cells
    assert torch.equal(ctrl.edit_mask(), outlines)
    assert torch.equal(ctrl.last_mask, reference_mask(ctrl)[1:]) and ctrl.last_mask.sum() > 2 * outlines.sum()
    # the options that shape the blend shape the exported outline too
    ctrl = controller(EditOptions(blend_words="ball", blend_target_words="cube", blend_dilation=16))
    ctrl.cur_step = ctrl.blend_start
    ctrl.end_step(torch.randn(2, F_, 4, H, W))
    assert torch.equal(ctrl.edit_mask(), dilate_mask(outlines, 2))
    # a recolour's blend is already the outline: exported as it is
    ctrl = controller(EditOptions(blend_words="ball"), target="a blue ball on grass")
    ctrl.cur_step = ctrl.blend_start
    ctrl.end_step(torch.randn(2, F_, 4, H, W))
    assert ctrl.edit_mask() is ctrl.last_mask


def test_vae_factor_from_the_vae_config():
    vae = lambda blocks: SimpleNamespace(config=SimpleNamespace(block_out_channels=blocks))
    assert vae_factor(vae([128, 256, 512, 512])) == 8  # SD
    assert vae_factor(vae([16, 32, 64])) == 4  # the small world: 64 px -> 16


# ---------------------------------------------------------------------------------------------------------
# compositing

ON = CompositeOptions(composite=True, mask_dilation=0, feather=0)


def clip_pair(n=None, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    lead = (F_,) if n is None else (n, F_)
    edited = torch.rand(*lead, size, size, 3, generator=g)
    source = torch.rand(F_, size, size, 3, generator=g)
    mask = torch.zeros(*lead, 1, size // 4, size // 4)  # latent size, factor 4
    mask[..., 2:5, 3:6] = 1
    return edited, source, mask


@pytest.mark.parametrize("dilation,feather", [(0, 0), (4, 0), (4, 4), (8, 3)])
def test_composite_keeps_the_source_outside_and_the_edit_inside(dilation, feather):
    edited, source, mask = clip_pair()
    options = CompositeOptions(composite=True, mask_dilation=dilation, feather=feather)
    out = composite_frames(edited=edited, source=source, mask=mask, options=options)
    alpha = composite_mask(mask, (32, 32), options)
    inside = torch.zeros(F_, 32, 32, dtype=torch.bool)
    inside[:, 8:20, 12:24] = True  # the mask's latent pixels 2:5, 3:6 at 4 px each
    region = dilate_mask(inside, dilation).bool()
    assert torch.equal(alpha > 0, region)
    assert torch.equal(out[~region], source[~region]), "a pixel outside the dilated mask is not the source's"
    assert torch.equal(out[inside], edited[inside]), "a pixel of the mask is not the edit's"
    ramp = (alpha > 0) & (alpha < 1)
    assert ramp.any() == (feather > 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_edit_keeps_the_full_precision_source_outside_bit_for_bit(dtype):
    edited, source, mask = clip_pair()
    edited[:, 10, 14] = float("nan")  # inside the mask: must not leak out through 0 * NaN
    options = CompositeOptions(composite=True, mask_dilation=4, feather=2)
    out = composite_frames(edited=edited.to(dtype), source=source, mask=mask, options=options)
    alpha = composite_mask(mask, (32, 32), options)
    assert out.dtype == torch.float32
    assert torch.equal(out[alpha == 0], source[alpha == 0]), "the source was rounded to the edit's precision"
    inside = (alpha == 1) & ~edited.isnan().any(-1)
    assert torch.equal(out[inside], edited.to(dtype).float()[inside])
    assert not out[alpha == 0].isnan().any()


@pytest.mark.parametrize("threshold", [0.0, 0.2])
def test_a_nan_in_the_edit_outside_the_mask_gives_the_source_back(threshold):
    """An edit pixel that is NaN (an fp16 VAE's overflow) outside the mask: the source's pixel comes back, with the
    change-aware composite too (its weight was NaN there, and 0 * NaN let it through), and the exported weights
    stay within 0..1 (a NaN there reached ImageCompositeMasked)."""
    from vp2p_core.composite import composite_alpha

    edited, source, mask = clip_pair()
    edited[:, 0, 0] = float("nan")  # far outside the mask
    edited[:, 10, 14] = float("nan")  # inside it
    options = CompositeOptions(composite=True, mask_dilation=4, feather=2, change_threshold=threshold)
    out = composite_frames(edited=edited, source=source, mask=mask, options=options)
    assert torch.equal(out[:, 0, 0], source[:, 0, 0])
    alpha = composite_alpha(mask, edited=edited, source=source, options=options)
    assert not bool(alpha.isnan().any()) and float(alpha.min()) >= 0 and float(alpha.max()) <= 1


def test_composite_of_several_targets_and_off():
    edited, source, mask = clip_pair(n=2)
    mask[1] = 0
    out = composite_frames(edited=edited, source=source, mask=mask, options=ON)
    assert out.shape == edited.shape
    assert torch.equal(out[1], source) and not torch.equal(out[0], source)
    assert composite_frames(edited=edited, source=source, mask=mask, options=CompositeOptions()) is edited


def test_composite_refuses_other_frames_and_masks():
    """(Options out of range: tests/test_options.py.)"""
    edited, source, mask = clip_pair()
    for bad in (source[:-1], source[:, :16, :16], torch.rand(F_, 32, 32)):
        with pytest.raises(VP2PInputError, match="^source: "):
            composite_frames(edited=edited, source=bad, mask=mask, options=ON)
    for bad in (mask[:-1], mask[:, 0], torch.zeros(F_, 1, 5, 5), torch.zeros(F_, 1, 8, 4)):
        with pytest.raises(VP2PInputError, match="^mask: "):
            composite_frames(edited=edited, source=source, mask=bad, options=ON)


def test_change_weight_is_the_ramp_between_half_and_one_and_a_half_thresholds():
    source = torch.full((1, 1, 6, 3), 0.3)
    source[..., 0] = 0.9  # a frame bright enough for the threshold to hold as it is
    edited = source.clone()
    edited[0, 0, :, 1] += torch.tensor([0.0, 0.05, 0.1, 0.2, 0.3, 0.6])  # the largest channel's difference
    w = change_weight(edited, source, 0.2)
    assert torch.allclose(w[0, 0], torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0, 1.0]))
    assert torch.equal(change_weight(edited, source, 0.0), torch.ones(1, 1, 6))
    # an alpha channel is not a change of the picture
    rgba = torch.cat([edited, torch.ones(1, 1, 6, 1)], -1)
    assert torch.equal(change_weight(rgba, torch.cat([source, torch.zeros(1, 1, 6, 1)], -1), 0.2), w)


@pytest.mark.parametrize("light", [1.0, 0.5, 0.3, 0.25, 0.1])
def test_a_dim_frame_keeps_a_clear_recolour(light):
    """A red -> blue square on a textured frame, the whole frame at a lower light: the recolour is kept at every
    light (at 0.25 of the light it was handed back whole: the colour differences fell under the absolute
    threshold). Frames whose 99th percentile is 0.5 of white or more keep the threshold as it is (the small world's
    clips, the dimmest 0.58: their composites are unchanged)."""
    g = torch.Generator().manual_seed(3)
    source = 0.3 + 0.6 * torch.rand(1, 32, 32, 3, generator=g)
    source[:, 8:20, 8:20] = torch.tensor([0.9, 0.1, 0.1])
    edited = source.clone()
    edited[:, 8:20, 8:20] = torch.tensor([0.1, 0.1, 0.9])
    w = change_weight(edited * light, source * light, 0.2)
    assert float(w[:, 9:19, 9:19].min()) == 1.0, light


@pytest.mark.parametrize("threshold", [0.1, 0.2, 0.5])
def test_change_threshold_keeps_what_the_edit_left_and_stays_near_the_edit(threshold):
    """Outside the dilated mask: the source, bit for bit, as without the option. Inside the whole mask: the
    source's pixel where the edit moved it by less than half the threshold, the edit's own where it moved it by
    1.5x or more, and never further than 9/16 of the threshold from the edit (twice the threshold where the pixel is
    background in both)."""
    edited, source, mask = clip_pair()
    edited = (source + (edited - 0.5) * 2.0).clamp(0, 1)  # differences across the whole ramp
    options = CompositeOptions(composite=True, mask_dilation=4, feather=0, change_threshold=threshold)
    out = composite_frames(edited=edited, source=source, mask=mask, options=options)
    plain = composite_frames(edited=edited, source=source, mask=mask, options=options.replace(change_threshold=0.0))
    region = composite_mask(mask, (32, 32), options).bool()
    assert torch.equal(out[~region], source[~region]) and torch.equal(plain[~region], source[~region])
    d = (edited - source).abs().amax(-1)
    # where the source is unlike the background around the mask and the edit like it, the edit took the object
    # away: no hand-back there; where both are like it, the source's pixel whole (random frames have few of
    # either: the two tests after this one test them on hand-made frames)
    to_source, to_edit = background_distance((source, edited), image_mask(mask, (32, 32), options))
    removed = (to_source > threshold) & (to_edit <= threshold)
    both = (to_source <= threshold) & (to_edit <= threshold)
    assert torch.equal(out[region & both], source[region & both]), "background in both is not the source's"
    small = region & (d <= threshold / 2) & ~removed
    large = region & (d >= 1.5 * threshold) & ~both
    assert small.any() and large.any() and (region & ~small & ~large).any(), "the test needs every part of the ramp"
    assert torch.equal(out[region & removed], edited[region & removed]), "what the edit took away came back"
    assert torch.equal(out[small], source[small]), "a pixel the edit hardly changed is not the source's"
    assert torch.equal(out[large], edited[large]), "a pixel the edit changed is not the edit's"
    assert float((out - edited).abs()[region & ~both].max()) <= 9 / 16 * threshold + 1e-6
    # background in both: source and edit each within the threshold of the same colour
    gap = (out - edited).abs()[region & both]
    assert gap.numel() == 0 or float(gap.max()) <= 2 * threshold + 1e-6


def test_change_threshold_does_not_bring_back_what_a_shape_swap_took_away():
    """A square on a background a little like it (0.25 apart in one channel; with the edit's 0.03 offset, its
    corners change by 0.22, inside the ramp at threshold 0.2) becomes a disc: the square's corners, background in
    the edit, stay the edit's, not the square's; where the disc covers the square (the edit's colour within the
    ramp's foot of the source's) and on the background around it, the source's pixels come back as before."""
    size, threshold = 32, 0.2
    background, square = torch.tensor([0.2, 0.4, 0.6]), torch.tensor([0.2, 0.4, 0.85])
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    in_square = (yy >= 8) & (yy < 24) & (xx >= 8) & (xx < 24)
    in_disc = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 <= 7.5 ** 2
    source = background.expand(F_, size, size, 3).clone()
    source[:, in_square] = square
    edited = background.expand(F_, size, size, 3) + 0.03  # the VAE's round trip: a little off everywhere
    edited[:, in_disc] = square + 0.03
    mask = torch.zeros(F_, 1, size // 4, size // 4)
    mask[..., 2:6, 2:6] = 1  # the square's cells
    options = CompositeOptions(composite=True, mask_dilation=0, feather=0, change_threshold=threshold)
    out = composite_frames(edited=edited, source=source, mask=mask, options=options)
    corners = in_square & ~in_disc
    assert torch.equal(out[:, corners], edited[:, corners]), "the square's corners came back"
    assert torch.equal(out[:, in_disc], source[:, in_disc]), "the disc's pixels over the square are not handed back"
    # the ramp alone (no mask: what change_weight did before) hands the corners back to the square
    ramp = change_weight(edited, source, threshold)
    assert float(ramp[:, corners].max()) < 1.0
    # composite_alpha (what Blend Mask hands ComfyUI) is the weight composite_frames blends with
    alpha = composite_alpha(mask, edited=edited, source=source, options=options)
    assert torch.equal(alpha[:, corners], torch.ones_like(alpha[:, corners])) and not alpha[:, in_disc].any()


def test_change_threshold_hands_back_a_rim_that_is_background_in_both():
    """A recolour whose edit smears the new colour 2 px past the object's edge, faintly (0.18 off the background in
    one channel: the ramp alone keeps 40% of it): outside the object, where source and edit are both within the
    threshold of the background around the mask, the source's pixels come back whole; the recoloured object stays
    the edit's."""
    size, threshold = 32, 0.2
    background = torch.tensor([0.4, 0.4, 0.4])
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    in_square = (yy >= 12) & (yy < 20) & (xx >= 12) & (xx < 20)
    rim = dilate_mask(in_square.float(), 2).bool() & ~in_square
    source = background.expand(F_, size, size, 3).clone()
    source[:, in_square] = torch.tensor([0.9, 0.1, 0.1])
    edited = source.clone()
    edited[:, in_square] = torch.tensor([0.1, 0.9, 0.1])
    edited[:, rim] = background + torch.tensor([0.0, 0.18, 0.0])
    mask = torch.zeros(F_, 1, size // 4, size // 4)
    mask[..., 2:6, 2:6] = 1  # 8..24 px: the square and 4 px around it
    options = CompositeOptions(composite=True, mask_dilation=0, feather=0, change_threshold=threshold)
    assert float(change_weight(edited, source, threshold)[:, rim].min()) > 0.3  # the ramp alone keeps some rim
    out = composite_frames(edited=edited, source=source, mask=mask, options=options)
    assert torch.equal(out[:, rim], source[:, rim]), "the rim of the new colour stayed"
    assert torch.equal(out[:, in_square], edited[:, in_square]), "the recolour did not stay"


def test_recolour_margin_off_pastes_an_outline_mask_with_a_hard_edge():
    """An outline mask (EditResult.blend_outline: the region the sampler blended in) with recolour_margin off: the
    composite's weight is the image mask itself, no dilation or feather, so every pixel outside it is the source's;
    on, or for a grown blend's mask (outline=False), the margin as before."""
    edited, source, mask = clip_pair()
    options = CompositeOptions(composite=True, mask_dilation=4, feather=2, recolour_margin=False)
    plain = image_mask(mask, (32, 32), options)
    assert torch.equal(composite_mask(mask, (32, 32), options, outline=True), plain)
    margin = composite_mask(mask, (32, 32), options.replace(recolour_margin=True))
    assert torch.equal(composite_mask(mask, (32, 32), options), margin)  # a shape swap keeps its margin
    assert torch.equal(composite_mask(mask, (32, 32), options.replace(recolour_margin=True), outline=True), margin)
    assert float(margin.sum()) > float(plain.sum())
    out = composite_frames(edited=edited, source=source, mask=mask, options=options, outline=True)
    outside, inside = plain == 0, plain == 1
    assert torch.equal(out[outside], source[outside]) and torch.equal(out[inside], edited[inside])
    grown = composite_frames(edited=edited, source=source, mask=mask, options=options)
    ring = (margin == 1) & outside
    assert ring.any() and torch.equal(grown[ring], edited[ring])


def test_change_threshold_is_checked():
    for bad in (-0.1, 1.5, "x"):
        with pytest.raises(VP2PInputError, match="^change_threshold: "):
            CompositeOptions(change_threshold=bad)


def disc_clip(size=64, centre=(30.0, 27.0), radius=11.0):
    """A flat background with a disc of another colour, one frame per shift; the disc's true masks."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    frames, masks = [], []
    for shift in range(F_):
        disc = (yy - centre[0]) ** 2 + (xx - centre[1] - 2 * shift) ** 2 <= radius ** 2
        frame = torch.tensor([0.2, 0.5, 0.2]).expand(size, size, 3).clone()
        frame[disc] = torch.tensor([0.9, 0.1, 0.1])
        frames.append(frame)
        masks.append(disc)
    return torch.stack(frames), torch.stack(masks)


def _iou(a, b):
    return float((a & b).sum()) / float((a | b).sum())


def test_refine_mask_moves_the_blocky_edge_onto_the_object():
    """A mask of whole 4-px blocks (every cell of the attention grid the disc touches): snapped to the frame's
    edges it is the disc itself, and it stays off far from the blocks."""
    frames, discs = disc_clip()
    blocks = torch.nn.functional.max_pool2d(discs.float()[:, None], 4)  # every latent cell the disc touches
    coarse = image_mask(blocks, (64, 64))
    refined = image_mask(blocks, (64, 64), CompositeOptions(refine_radius=8), guides=(frames, frames))
    for c, r, d in zip(coarse.bool(), refined.bool(), discs):
        assert _iou(r, d) > 0.95 and _iou(c, d) < 0.8, (_iou(r, d), _iou(c, d))  # measured: 1.00 against 0.71
    far = dilate_mask(coarse, 8) == 0
    assert not refined.bool()[far.bool()].any()
    assert torch.equal(refine_mask(coarse, (frames,), radius=0), coarse)
    with pytest.raises(VP2PInputError, match="^guides: "):
        refine_mask(coarse, (frames[:, :32],), radius=4)


def test_a_recolours_mask_snaps_to_the_source_alone():
    """A recolour whose edit sags past the object (a blob of the new colour below the disc, inside the blocks of the
    attention grid the disc touches). Snapped to the source and the edit, the mask follows the edit's sag; for an
    outline mask (EditResult.blend_outline: a recolour, which keeps its outline) it snaps to the source's edges
    alone and is the disc."""
    frames, discs = disc_clip()
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    edited = frames.clone()
    sags = []
    for i in range(F_):
        sag = (yy >= 40) & (yy < 44) & ((xx - 27 - 2 * i).abs() <= 5) & ~discs[i]
        edited[i][discs[i] | sag] = torch.tensor([0.1, 0.1, 0.9])
        sags.append(sag)
    sags = torch.stack(sags)
    blocks = torch.nn.functional.max_pool2d(discs.float()[:, None], 4)  # every latent cell the disc touches
    options = CompositeOptions(refine_radius=8)
    both = image_mask(blocks, (64, 64), options, guides=(frames, edited)).bool()
    source_only = image_mask(blocks, (64, 64), options, guides=(frames, edited), outline=True).bool()
    assert float(both[sags].float().mean()) > 0.5, "the test needs a mask that follows the edit's sag"
    assert not source_only[sags].any()
    for r, d in zip(source_only, discs):
        assert _iou(r, d) > 0.95, _iou(r, d)


def test_refine_mask_keeps_the_old_shape_and_the_new_one_of_a_shape_swap():
    """Square -> disc: the blocks cover the disc and most of the square, not its corners. The mask is snapped to the
    source frame alone as well as to both frames' colours, so the square's corners (source: square, edit:
    background) join it and the composite cannot leave them in the frame (with the stacked colours alone 70% of
    the corners did); nothing far from the blocks is added."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    square = ((yy - 31.5).abs() <= 10) & ((xx - 31.5).abs() <= 10)
    disc = (yy - 31.5) ** 2 + (xx - 31.5) ** 2 <= 11.0 ** 2
    background = torch.tensor([0.2, 0.5, 0.2])
    source, edit = background.expand(64, 64, 3).clone(), background.expand(64, 64, 3).clone()
    source[square], edit[disc] = torch.tensor([0.1, 0.2, 0.9]), torch.tensor([0.1, 0.2, 0.9])
    blocks = torch.nn.functional.max_pool2d(disc.float()[None, None], 4)[0]  # every 4-px cell the disc touches
    coarse = image_mask(blocks.gt(0.5).float()[None], (64, 64))[0]
    corners = square & ~disc
    assert not coarse.bool()[corners].all(), "the test needs corners the blocks miss"
    refined = refine_mask(coarse, (source, edit), radius=8).bool()
    assert refined[corners].all() and refined[disc].all()
    assert _iou(refined, square | disc) > 0.95
    assert not refined[dilate_mask(coarse, 8) == 0].any()


def test_refine_radius_needs_the_frames_and_keeps_the_source_outside():
    edited, source, mask = clip_pair()
    options = CompositeOptions(composite=True, mask_dilation=2, feather=0, refine_radius=4)
    with pytest.raises(VP2PInputError, match="^mask: refine_radius > 0 compares the mask with the frames"):
        composite_mask(mask, (32, 32), options)
    out = composite_frames(edited=edited, source=source, mask=mask, options=options)
    region = composite_mask(mask, (32, 32), options, guides=(source, edited)).bool()
    assert torch.equal(out[~region], source[~region])
    for bad in (-1, 65, 1.5):
        with pytest.raises(VP2PInputError, match="^refine_radius: "):
            CompositeOptions(refine_radius=bad)


def occluded_disc_clip(size=64, centre=(32.0, 30.0), radius=12.0):
    """A red disc on textured grass with an anti-aliased rim, a dark post 4 px wide passing in front of it (across
    the disc in frames 1 and 2, beside it in 0 and 3), and the edit a recolour that paints the whole disc blue,
    post included. Returns source, edited [F,H,W,3], the disc's coverage [F,H,W] and the post [F,H,W]."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5,
                            torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij")
    cover = (radius + 0.5 - ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2).sqrt()).clamp(0, 1)
    grass = torch.tensor([0.22, 0.45, 0.15]) + 0.05 * (torch.rand(F_, size, size, 1, generator=g) - 0.5)
    red, blue, dark = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.15, 0.3, 0.95]), torch.tensor([0.12, 0.08, 0.06])
    posts = torch.zeros(F_, size, size, dtype=torch.bool)
    for f, left in enumerate((8, 24, 34, 50)):
        posts[f, :, left:left + 4] = True
    c = cover[None, ..., None]
    source = c * red + (1 - c) * grass
    source = torch.where(posts[..., None], dark.expand_as(source), source)
    edited = c * blue + (1 - c) * grass
    return source, edited, cover.expand(F_, size, size), posts


def test_occluder_threshold_keeps_what_passes_in_front_of_the_object_and_nothing_else():
    source, edited, cover, posts = occluded_disc_clip()
    mask = torch.zeros(F_, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1  # the attention grid's blocks over the disc (4 px each), post and all
    options = CompositeOptions(composite=True, mask_dilation=2, feather=1, occluder_threshold=0.3)
    inside = image_mask(mask, (64, 64), options.replace(occluder_threshold=0.0)).bool()
    found = occluder_mask(source, inside.float(), 0.3).bool()
    assert torch.equal(found, posts & inside), "the post in front of the disc is not exactly what was found"
    assert found[1:3].any() and not found[[0, 3]].any(), "the test needs a post beside the mask and one across it"
    assert not found[(cover > 0) & ~posts].any(), "the disc or its anti-aliased rim was taken for an occluder"
    out = composite_frames(edited=edited, source=source, mask=mask, options=options)
    assert torch.equal(out[posts], source[posts]), "the edit painted over the post (inside the mask or its margin)"
    disc = (cover == 1) & ~dilate_mask(posts.float(), 2).bool()
    assert torch.equal(out[disc], edited[disc]), "the recolour itself was lost"
    plain = composite_frames(edited=edited, source=source, mask=mask, options=options.replace(occluder_threshold=0.0))
    grown = dilate_mask(inside.float(), 2).bool()
    assert not torch.equal(plain[posts & grown], source[posts & grown]), "the test needs an edit over the post"
    away = ~dilate_mask(posts.float(), 1).bool()
    assert torch.equal(out[away], plain[away]), "pixels away from the post changed"
    # the feather's ramp runs along the post's edges: its neighbours inside the disc are half the edit's
    weight = composite_mask(mask, (64, 64), options, guides=(source, edited))
    beside = dilate_mask(posts.float(), 1).bool() & ~posts & (cover == 1) & inside
    assert beside.any() and weight[beside].eq(0.5).all() and weight[posts].eq(0).all()
    # two targets ([n, F, ...]) find the same in each; frames that do not match the mask are refused
    both = occluder_mask(source.expand(2, *source.shape), inside.float().expand(2, *inside.shape), 0.3)
    assert torch.equal(both, found.float().expand(2, *found.shape))
    with pytest.raises(VP2PInputError, match="^guides: frames"):
        occluder_mask(source[:2], inside.float(), 0.3)
    # the mask handed to ComfyUI is the same without the post; off, occluder_mask finds nothing
    guides = (source, edited)
    assert torch.equal(image_mask(mask, (64, 64), options, guides=guides).bool(), inside & ~found)
    assert not occluder_mask(source, inside.float(), 0.0).any()
    with pytest.raises(VP2PInputError, match="^mask: occluder_threshold > 0 compares the mask with the frames"):
        composite_mask(mask, (64, 64), options)
    for bad in (-0.1, 1.5):
        with pytest.raises(VP2PInputError, match="^occluder_threshold: "):
            CompositeOptions(occluder_threshold=bad)


def test_occluder_that_hides_most_of_the_object_on_one_frame_is_still_the_occluder():
    """On frame 1 a post 16 px wide hides most of the disc, so that frame's own median colour is the post's; the
    clip's other frames say the object is red, and the post is what is found, not the disc."""
    source, edited, cover, posts = occluded_disc_clip()
    source[1] = torch.where(cover[1, ..., None] > 0, torch.tensor([0.9, 0.1, 0.1]) * cover[1, ..., None] +
                            source[1] * (1 - cover[1, ..., None]), source[1])  # frame 1 without its post
    wide = torch.zeros(64, 64, dtype=torch.bool)
    wide[:, 22:38] = True
    source[1][wide] = torch.tensor([0.12, 0.08, 0.06])
    posts[1] = wide
    mask = torch.zeros(F_, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    inside = image_mask(mask, (64, 64), CompositeOptions()).bool()
    disc_only = (cover[1] > 0) & ~wide & inside[1]
    assert (wide & inside[1]).sum() > disc_only.sum(), "the test needs a post larger than the disc's visible part"
    found = occluder_mask(source, inside.float(), 0.3).bool()
    assert torch.equal(found[1], wide & inside[1])
    assert not found[1][disc_only].any()
