"""Gen-1's guidance: temporal-consistency guidance and blurred structure guidance through a ControlNet."""
import pytest
import torch

from vp2p_core import (EditOptions, InversionOptions, SamplerOptions, StructureGuidance, StructureOptions,
                       VP2PInputError, VideoModel, blur_structure, build_edit_plan,
                       diffusers_controlnet, invert, sample_edit)
from vp2p_world.tiny import ToyTokenizer, tiny_unet, toy_embed

torch.set_num_threads(1)
SRC, TGT = "a red ball on grass", "a blue ball on grass"
F_, STEPS = 3, 5


@pytest.fixture(scope="module")
def setup():
    tok = ToyTokenizer()
    emb = toy_embed(tok, [SRC, TGT, ""])
    latents = torch.randn(F_, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    model = VideoModel.from_unet(tiny_unet())
    inv = invert(model, latents, emb[:1], emb[2:3], SRC, options=InversionOptions(mode="fast", steps=STEPS))
    plan = build_edit_plan(tok, SRC, TGT, options=EditOptions(blend_words="ball"))
    plan.source_embedding, plan.target_embeddings, plan.empty_embedding = emb[:1], emb[1:2], emb[2:3]
    return model, inv, plan


@pytest.fixture(scope="module")
def controlnet():
    from diffusers import ControlNetModel

    torch.manual_seed(0)
    cn = ControlNetModel.from_unet(tiny_unet(), conditioning_embedding_out_channels=(8, 16, 16)).eval()
    with torch.no_grad():  # ControlNets start silent (zero convs); make this one speak
        for n, p in cn.named_parameters():
            if "zero" in n or "controlnet_down_blocks" in n or "controlnet_mid_block" in n or "conv_out" in n:
                p.normal_(0, 0.05)
    return cn


def test_temporal_guidance_one_is_the_plain_sampler(setup):
    model, inv, plan = setup
    plain = sample_edit(model, inv, plan)
    same = sample_edit(model, inv, plan, options=SamplerOptions(temporal_guidance=1.0))
    assert torch.equal(plain.edited, same.edited) and plain.stats["forwards"] == same.stats["forwards"]
    smooth = sample_edit(model, inv, plan, options=SamplerOptions(temporal_guidance=2.0))
    assert smooth.stats["forwards"] == plain.stats["forwards"] + STEPS  # one frame-independent pass per step
    assert (smooth.edited - plain.edited).abs().max() > 1e-4
    assert torch.equal(smooth.source, plain.source)  # the source branch is untouched
    with pytest.raises(VP2PInputError, match="temporal_guidance"):
        sample_edit(model, inv, plan, options=SamplerOptions(temporal_guidance=-1))


def test_zero_strength_controlnet_equals_none(setup, controlnet):
    model, inv, plan = setup
    images = torch.rand(F_, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    fn = diffusers_controlnet(controlnet)
    plain = sample_edit(model, inv, plan)
    zero = StructureGuidance.from_images(fn, images, (16, 16), F_, options=StructureOptions(strength=0.0))
    assert torch.equal(sample_edit(model, inv, plan, structure=zero).edited, plain.edited)
    full = StructureGuidance.from_images(fn, images, (16, 16), F_, options=StructureOptions(strength=1.0))
    steered = sample_edit(model, inv, plan, structure=full)
    assert (steered.edited - plain.edited).abs().max() > 1e-4
    assert torch.allclose(steered.source, plain.source, atol=1e-5)  # the source branch follows the inversion
    late = StructureGuidance.from_images(fn, images, (16, 16), F_,
                                         options=StructureOptions(start_percent=1.0, end_percent=1.0))
    assert torch.equal(sample_edit(model, inv, plan, structure=late).edited, plain.edited)


def test_blur_levels():
    g = torch.Generator().manual_seed(2)
    maps = (torch.rand(2, 3, 64, 64, generator=g) > 0.5).float()
    assert torch.equal(blur_structure(maps, 0), maps)
    prev = None
    for level in (1, 2, 4, 8):
        b = blur_structure(maps, level)
        assert b.shape == maps.shape and torch.allclose(b.mean(), maps.mean(), atol=0.02)
        hf = (b[..., 1:] - b[..., :-1]).abs().mean()  # high-frequency energy falls with the level
        assert prev is None or hf < prev
        prev = hf
    # a level means the same at any resolution: blurring a 2x upsampled map then downsampling agrees
    big = torch.nn.functional.interpolate(maps, scale_factor=2, mode="nearest")
    small = torch.nn.functional.avg_pool2d(blur_structure(big, 4), 2)
    assert (small - blur_structure(maps, 4)).abs().mean() < 0.02
    with pytest.raises(VP2PInputError, match="structure_blur"):
        blur_structure(maps, -1)
    one = torch.rand(2, 3, 1, 5)
    assert torch.equal(blur_structure(one, 4), one)  # nothing to blur across one row (the kernel was -1 wide)


def test_structure_clip_must_fit_the_latents(controlnet):
    fn = diffusers_controlnet(controlnet)
    with pytest.raises(VP2PInputError, match="5 frames, but the clip has 3"):
        StructureGuidance.from_images(fn, torch.rand(5, 64, 64, 3), (16, 16), 3)
    with pytest.raises(VP2PInputError, match="do not fit latents of 16x16"):
        StructureGuidance.from_images(fn, torch.rand(3, 64, 48, 3), (16, 16), 3)
    # a preprocessor's own size is fitted as ComfyUI's ControlNet fits a hint: the middle of the clip's aspect,
    # scaled; one map serves every frame (both were refused)
    wide = torch.zeros(1, 32, 48, 3)
    wide[:, :, 8:40] = 1.0  # the middle 32 columns white, 8 black on each side
    sg = StructureGuidance.from_images(fn, wide, (16, 16), 3, vae_factor=4)
    assert tuple(sg.structure.shape) == (3, 3, 64, 64) and bool(sg.structure.gt(0.99).all())
    tall = torch.zeros(3, 96, 64, 3)
    tall[:, 48:] = 1.0
    sg = StructureGuidance.from_images(fn, tall, (16, 16), 3, vae_factor=4)
    assert float(sg.structure[:, :, :24].max()) < 0.01 and float(sg.structure[:, :, 40:].min()) > 0.99
    with pytest.raises(VP2PInputError, match="IMAGE"):
        StructureGuidance.from_images(fn, torch.rand(3, 64, 64), (16, 16), 3)
    one_channel = StructureGuidance.from_images(fn, torch.rand(3, 64, 64, 1), (16, 16), 3)
    assert one_channel.structure.shape == (3, 3, 64, 64)


def test_temporal_guidance_reuses_the_controlnet_residuals(setup, controlnet):
    model, inv, plan = setup
    calls = []
    inner = diffusers_controlnet(controlnet)

    def counting(*args):
        calls.append(args[0].shape[0])
        return inner(*args)

    images = torch.rand(F_, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    sg = StructureGuidance.from_images(counting, images, (16, 16), F_)
    res = sample_edit(model, inv, plan, options=SamplerOptions(temporal_guidance=1.5), structure=sg)
    assert len(calls) == STEPS and all(c == 2 * F_ for c in calls)  # target cond + uncond rows, once per step
    assert torch.isfinite(res.edited).all()


def test_structure_and_temporal_guidance_follow_each_context_window(controlnet):
    """Through context windows, every ControlNet call gets the structure frames of its window's own frames (the
    clip's first frame for the anchor row), and temporal guidance still steers every frame."""
    from vp2p_core.context import ContextWindows
    from vp2p_core.options import ContextOptions

    tok = ToyTokenizer()
    emb = toy_embed(tok, [SRC, TGT, ""])
    f = 7
    latents = torch.randn(f, 4, 16, 16, generator=torch.Generator().manual_seed(6))
    model = VideoModel.from_unet(tiny_unet())
    ctx = ContextWindows(ContextOptions(context_length=4, context_overlap=1))
    inv = invert(model, latents, emb[:1], emb[2:3], SRC, options=InversionOptions(mode="fast", steps=3), context=ctx)
    plan = build_edit_plan(tok, SRC, TGT, options=EditOptions(blend_words="ball"))
    plan.source_embedding, plan.target_embeddings, plan.empty_embedding = emb[:1], emb[1:2], emb[2:3]
    images = (torch.arange(f, dtype=torch.float32) / 10).view(f, 1, 1, 1).expand(f, 64, 64, 3)  # frame k: k/10
    seen = []
    inner = diffusers_controlnet(controlnet)

    def spy(sample, timestep, text, cond):
        seen.append(tuple(round(float(v) * 10) for v in cond[:, 0].mean((1, 2))))
        return inner(sample, timestep, text, cond)

    guide = StructureGuidance.from_images(spy, images, (16, 16), f)
    plain = sample_edit(model, inv, plan, context=ctx)
    res = sample_edit(model, inv, plan, context=ctx, structure=guide,
                      options=SamplerOptions(temporal_guidance=2.0))
    windows = [w.frames for w in ctx.windows(f)]
    assert windows == [(0, 1, 2, 3), (0, 3, 4, 5, 6)]
    per_call = [tuple(w) * 2 for w in windows]  # the target's conditional and unconditional rows
    assert seen == per_call * 3  # every window of every step
    assert res.edited.shape == plain.edited.shape == (1, f, 4, 16, 16) and torch.isfinite(res.edited).all()
    assert ((res.edited - plain.edited).abs().flatten(2).amax(-1) > 1e-4).all()  # every frame steered


def test_a_float32_controlnet_steers_a_half_precision_unet(setup, controlnet):
    """Editing in bf16 with the ControlNet left in float32 (or the other way round): the adapter casts the inputs
    to the ControlNet's precision and its residuals back to the latents' (float32), which video_forward casts to the
    UNet's (before, a dtype mismatch inside the ControlNet); its steer on the bf16 edit is the float32 one's."""
    model, inv, plan = setup
    half = VideoModel.from_unet(tiny_unet().to(torch.bfloat16))
    images = torch.rand(F_, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    sg = StructureGuidance.from_images(diffusers_controlnet(controlnet), images, (16, 16), F_)
    res = sample_edit(half, inv, plan, structure=sg)
    assert res.edited.dtype == torch.float32 and torch.isfinite(res.edited).all()  # float32 latents, bf16 UNet
    # and it steers: the ControlNet's residuals reach the bf16 UNet as they reach the float32 one
    unsteered = sample_edit(half, inv, plan).edited
    full = sample_edit(VideoModel.from_unet(tiny_unet()), inv, plan, structure=sg).edited
    full_unsteered = sample_edit(VideoModel.from_unet(tiny_unet()), inv, plan).edited
    steer, steer32 = res.edited - unsteered, full - full_unsteered
    # (measured: 1.03 times the float32 steer's size, 0.30 of it apart: bf16's rounding over 8 edited steps)
    assert 0.7 < float(steer.norm() / steer32.norm()) < 1.3 and float((steer - steer32).norm() / steer32.norm()) < 0.5


def test_temporal_guidance_is_gen1s_formula_on_one_step(setup):
    """One DDIM step without attention control, by hand: eps = eps_u + w (eps_c - eps_u) + (w_t - 1)(eps_u -
    eps_img), eps_img the unconditional prediction with every frame on its own. A flipped sign or the conditional
    row in place of the unconditional would pass the tests above and fail here."""
    from vp2p_core import DDIMSchedule, video_forward

    model, _, plan = setup
    tok = ToyTokenizer()
    emb = toy_embed(tok, [SRC, TGT, ""])
    latents = torch.randn(F_, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    inv = invert(model, latents, emb[:1], emb[2:3], SRC, options=InversionOptions(mode="fast", steps=1))
    bare = build_edit_plan(tok, SRC, TGT, options=EditOptions(edit_mode="none", self_replace=0.0))
    bare.source_embedding, bare.target_embeddings, bare.empty_embedding = emb[:1], emb[1:2], emb[2:3]
    res = sample_edit(model, inv, bare, options=SamplerOptions(temporal_guidance=2.5, guidance=7.5))
    sched = DDIMSchedule(model.schedule, 1)
    t = int(sched.timesteps[0])
    x = inv.x_T
    with torch.no_grad():
        def eps(text, **kw):
            return sched.to_eps(video_forward(model.unet, x, t, text.expand(F_, -1, -1), F_, **kw), t, x)

        e_u, e_c, e_img = eps(emb[2:3]), eps(emb[1:2]), eps(emb[2:3], independent=True)
    assert (e_u - e_img).abs().max() > 1e-3, "the test needs frames that see each other"
    expected = sched.prev_step(e_u + 7.5 * (e_c - e_u) + 1.5 * (e_u - e_img), t, x)
    assert torch.allclose(res.edited[0], expected, atol=1e-4), (res.edited[0] - expected).abs().max()
    flipped = sched.prev_step(e_u + 7.5 * (e_c - e_u) - 1.5 * (e_u - e_img), t, x)
    assert (res.edited[0] - flipped).abs().max() > 1e-3, "the term is too small to tell its sign"  # 0.0016
