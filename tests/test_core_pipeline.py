"""Tuning, inversion and editing on a tiny random model: reconstruction, exactness, masks, files, errors."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import vp2p_core.attention as attention
from vp2p_core import (DDIMSchedule, Delta, EditOptions, Host, Inversion, InversionOptions, SamplerOptions, TuneOptions, VP2PInputError, VideoModel, apply_delta,
                       build_edit_plan, invert, one_shot_tune, sample_edit, trainable_parameter_names,
                       trained_weights, video_forward)
from vp2p_core.attention import TemporalAttnProcessor
from vp2p_core.inversion import ddim_inversion, latent_thumbnail
from vp2p_core.schedule import DDIMConfig
from vp2p_world.tiny import ToyTokenizer, tiny_unet, tiny_video_model, toy_embed

torch.set_num_threads(1)

SRC, TGT = "a red ball on grass", "a blue ball on grass"
STEPS = 8
FRAMES = 3


@pytest.fixture(scope="module")
def world():
    tok = ToyTokenizer()
    emb = toy_embed(tok, [SRC, TGT, "", "a green ball on grass"])
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(FRAMES, 4, 16, 16, generator=g) * 0.8
    model = tiny_video_model(g)  # the temporal path non-trivial, as after tuning
    return tok, emb, latents, model


@pytest.fixture(scope="module")
def inversion(world):
    tok, emb, latents, model = world
    return invert(model, latents, emb[:1], emb[2:3], SRC,
                  options=InversionOptions(mode="null_text", steps=STEPS, guidance=7.5))


def _plan(tok, emb, targets=(TGT,), **kw):
    plan = build_edit_plan(tok, SRC, list(targets), options=EditOptions(**kw))
    idx = {TGT: 1, "a green ball on grass": 3, SRC: 0}
    plan.source_embedding = emb[:1]
    plan.target_embeddings = torch.cat([emb[idx[t]:idx[t] + 1] for t in targets])
    plan.empty_embedding = emb[2:3]
    return plan


def _guided_reconstruction(model, x_T, cond, uncond, steps, guidance):
    """Plain sampling from x_T with the source prompt and the empty prompt as unconditional."""
    sched = DDIMSchedule(model.schedule, steps)
    x = x_T
    with torch.no_grad():
        for t in sched.timesteps.tolist():
            e = video_forward(model.unet, torch.cat([x, x]), t, torch.cat([uncond, cond]), FRAMES).chunk(2)
            x = sched.prev_step(e[0] + guidance * (e[1] - e[0]), t, x)
    return x


def test_null_text_reconstructs_better_than_ddim(world, inversion):
    tok, emb, latents, model = world
    ddim_err = (_guided_reconstruction(model, inversion.x_T, emb[:1], emb[2:3], STEPS, 7.5) - latents).pow(2).mean()
    null_err = (inversion.trajectory[-1] - latents).pow(2).mean()
    # measured on this tiny random model (8 steps): DDIM at w=7.5 1.194, null-text 0.701. Random weights make
    # both imperfect (the embedding's lr-1e-2 Adam steps can only move so far); a trained model gets near exact.
    print(f"reconstruction MSE at w=7.5: DDIM {ddim_err:.4f}, null-text {null_err:.4f}")
    assert null_err < 0.7 * ddim_err
    # the edit's source branch with the stored trajectory is the same reconstruction
    assert inversion.trajectory.shape == (STEPS, FRAMES, 4, 16, 16)
    assert inversion.null_embeddings.shape == (STEPS, 77, 32)


def test_fast_mode_source_branch_is_plain_ddim(world):
    tok, emb, latents, model = world
    inv = invert(model, latents, emb[:1], emb[2:3], SRC, options=InversionOptions(mode="fast", steps=STEPS))
    assert inv.null_embeddings is None and inv.trajectory is None
    res = sample_edit(model, inv, _plan(tok, emb))
    ref = _guided_reconstruction(model, inv.x_T, emb[:1], emb[:1], STEPS, 1.0)  # cond only
    assert torch.allclose(res.source, ref, atol=1e-4)
    assert res.stats["forwards"] == STEPS * 3  # source cond + target cond/uncond


def test_same_prompt_without_decoupling_reproduces_source_exactly(world, inversion):
    tok, emb, latents, model = world
    plan = build_edit_plan(tok, SRC, SRC, options=EditOptions(blend_words="ball"))
    plan.source_embedding, plan.target_embeddings, plan.empty_embedding = emb[:1], emb[:1], emb[2:3]
    res = sample_edit(model, inversion, plan,
                      options=SamplerOptions(decoupled_guidance=False, reuse_source_trajectory=False))
    assert torch.equal(res.edited[0], res.source)
    assert res.stats["forwards"] == STEPS * 4


def test_reused_trajectory_equals_recomputed_source(world, inversion):
    tok, emb, latents, model = world
    a = sample_edit(model, inversion, _plan(tok, emb), options=SamplerOptions(reuse_source_trajectory=True))
    b = sample_edit(model, inversion, _plan(tok, emb), options=SamplerOptions(reuse_source_trajectory=False))
    assert a.stats["forwards"] == STEPS * 3 and b.stats["forwards"] == STEPS * 4
    # what a host asks memory for: the clips of one call, as run
    from vp2p_core.sampling import clips_per_call

    assert clips_per_call(inversion, 1, SamplerOptions(reuse_source_trajectory=True)) == 3
    assert clips_per_call(inversion, 1, SamplerOptions(reuse_source_trajectory=False)) == 4
    assert clips_per_call(inversion, 2, SamplerOptions(guidance=5.0, edit_guidance=2.0)) == 2 + 2 * 2 + 2
    # float32 round-off only: a step that stops on its ratio keeps the guided latent of its last loss evaluation, a
    # forward made with autograd on, which the recomputation makes without; guidance 7.5 amplifies the ~1e-6
    # difference over the steps (measured 1.1e-4 at most). A wrong step would differ by far more than 1e-2.
    assert torch.allclose(a.source, b.source, atol=3e-4)
    assert torch.allclose(a.edited, b.edited, atol=1e-4)


def test_the_edit_previews_the_clean_latent_it_heads_for(world, inversion, monkeypatch):
    """The sampler's preview is the first target's first frame as predicted clean (as KSampler previews): from
    the middle of the schedule on it is far nearer the edit that comes out than that step's noisy latent, and at
    the last step it is that edit but for the schedule's final alpha."""
    tok, emb, latents, model = world
    previews, noisy = [], []
    prev_step = DDIMSchedule.prev_step

    def recording(self, eps, t, sample):
        if sample.dim() == 5:  # the targets' latents (the source replays its trajectory)
            noisy.append(sample[0, :1].clone())
        return prev_step(self, eps, t, sample)

    monkeypatch.setattr(DDIMSchedule, "prev_step", recording)
    host = Host(progress=lambda step, total, preview: previews.append(preview.clone()))
    res = sample_edit(model, inversion, _plan(tok, emb), host=host)
    final = res.edited[0, :1]
    assert len(previews) == len(noisy) == STEPS and all(p.shape == final.shape for p in previews)
    assert _relative(previews[-1], final) < 0.05
    # measured: the preview 0.78 -> 0.008 of the edit's norm away over the 8 steps, the noisy latent 0.93 -> 0.12
    for i in range(STEPS // 2, STEPS - 1):  # the last step's latent is nearly clean itself
        assert _relative(previews[i], final) < 0.5 * _relative(noisy[i], final), i


def test_local_blend_keeps_source_outside_mask(world, inversion):
    tok, emb, latents, model = world
    res = sample_edit(model, inversion, _plan(tok, emb, blend_words="ball", mask_threshold=0.9))
    mask = res.blend_mask[0]  # [F,1,h,w]
    assert 0 < mask.mean() < 1, "the test needs a mask that covers part of the frame"
    outside = (mask == 0).expand_as(res.edited[0])
    assert torch.equal(res.edited[0][outside], res.source[outside])
    assert (res.edited[0][~outside] - res.source[~outside]).abs().max() > 1e-4
    # the same blend words in both prompts: an outline blend, and the exported mask is the very region blended in
    # (what lets a composite paste it without a margin, CompositeOptions.recolour_margin); words that differ: a
    # grown blend, whose exported outlines the edit may pass
    assert res.blend_outline
    swap = sample_edit(model, inversion, _plan(tok, emb, blend_words="red", blend_target_words="blue",
                                               mask_threshold=0.9))
    assert swap.blend_mask is not None and not swap.blend_outline


def test_half_precision_model_edits_with_local_blend(world):
    """Editing in fp16 (InflationOptions.weight_dtype): local blend's float32 mask once turned the latents float32,
    and the next UNet call failed on fp16 weights."""
    tok, emb, latents, model = world
    half = copy.deepcopy(model)
    half.unet.half()
    inv = invert(half, latents.half(), emb[:1].half(), None, SRC, options=InversionOptions(mode="fast", steps=3))
    res = sample_edit(half, inv, _plan(tok, emb.half(), blend_words="ball", mask_threshold=0.9))
    assert res.blend_mask is not None and torch.isfinite(res.edited.float()).all()


def test_a_float32_delta_and_inversion_fit_the_same_weights_in_half_precision(world, tmp_path):
    """Tune and invert in float32, edit in fp16 or bf16 (InflationOptions.weight_dtype): the delta and the
    inversion fit the same checkpoint held in half precision (its own fingerprint differs: tiny_unet's weights are
    not fp16 values), and an inversion made in half precision fits the float32 model; another checkpoint is still
    refused in either precision."""
    tok, emb, latents, _ = world
    full = VideoModel.from_unet(tiny_unet())
    half, bf16 = VideoModel.from_unet(tiny_unet().half()), VideoModel.from_unet(tiny_unet().to(torch.bfloat16))
    bf16_of_fp16 = VideoModel.from_unet(tiny_unet().half().to(torch.bfloat16))  # a GPU ComfyUI holds fp16
    other = VideoModel.from_unet(tiny_unet(seed=1).half())
    assert half.base_fingerprint != full.base_fingerprint and half.base_aliases == () and len(full.base_aliases) == 3
    delta = one_shot_tune(full, latents, emb[:1], SRC, options=TuneOptions(steps=1))
    delta.save(tmp_path / "d.safetensors")
    delta = Delta.load(tmp_path / "d.safetensors")
    for m in (half, bf16, bf16_of_fp16):
        apply_delta(m, delta)
    with pytest.raises(VP2PInputError, match="delta: made for the model"):
        apply_delta(other, delta)
    inv = invert(full, latents, emb[:1], None, SRC, options=InversionOptions(mode="fast", steps=3))
    inv.save(tmp_path / "i.safetensors")
    inv = Inversion.load(tmp_path / "i.safetensors")
    for m in (half, bf16, bf16_of_fp16):
        inv.check_model(m.fingerprints)
    res = sample_edit(half, inv, _plan(tok, emb.half(), blend_words="ball", mask_threshold=0.9))
    assert torch.isfinite(res.edited.float()).all()
    made_in_half = invert(half, latents.half(), emb[:1].half(), None, SRC,
                          options=InversionOptions(mode="fast", steps=3))
    made_in_half.check_model(full.fingerprints)
    apply_delta(other, Delta(tensors=delta.tensors, base_fingerprint=other.base_fingerprint, num_frames=FRAMES,
                             prompt=SRC, steps=1))
    for bad in (inv, made_in_half):
        with pytest.raises(VP2PInputError, match="inversion: made with the model"):
            bad.check_model(other.fingerprints)
    # half weights neither tune nor run null-text inversion (fp16: NaN; bf16: most of AdamW's updates round away)
    for m, name in ((half, "float16"), (bf16, "bfloat16")):
        with pytest.raises(VP2PInputError, match=f"^model: its weights are {name}; one-shot tuning needs float32"):
            one_shot_tune(m, latents.to(m.unet.dtype), emb[:1].to(m.unet.dtype), SRC, options=TuneOptions(steps=1))
        with pytest.raises(VP2PInputError, match=f"^model: its weights are {name}; null-text inversion needs"):
            invert(m, latents, emb[:1], emb[2:3], SRC, options=InversionOptions(mode="null_text", steps=2))


def _relative(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_half_precision_weights_keep_float32_latents(world):
    """bf16 weights: the UNet computes in bf16, but the DDIM loops keep their latents in float32, so the inversion
    stays nearer the float32 run's than the same loop with every step's latents rounded to bf16 (as before)."""
    tok, emb, latents, _ = world
    full = VideoModel.from_unet(tiny_unet())
    bf16 = VideoModel.from_unet(tiny_unet().to(torch.bfloat16))
    opts = InversionOptions(mode="fast", steps=STEPS)
    plan = _plan(tok, emb, blend_words="ball", mask_threshold=0.9)
    ref_inv = invert(full, latents, emb[:1], None, SRC, options=opts)
    inv = invert(bf16, latents, emb[:1], None, SRC, options=opts)
    res = sample_edit(bf16, inv, plan)
    assert inv.x_T.dtype == res.edited.dtype == res.source.dtype == torch.float32
    rounded = ddim_inversion(bf16, latents.to(torch.bfloat16), emb[:1].to(torch.bfloat16),
                             DDIMSchedule(bf16.schedule, STEPS), keep_all=False)[-1]
    assert rounded.dtype == torch.bfloat16  # video_forward answers in the latents' dtype
    assert _relative(inv.x_T, ref_inv.x_T) < 0.85 * _relative(rounded, ref_inv.x_T)  # measured 0.0094 against 0.0128
    assert _relative(res.edited, sample_edit(full, ref_inv, plan).edited) < 0.1


def test_an_edit_region_keeps_the_source_outside_it(world, inversion):
    """A user's edit region (ComfyUI's noise_mask, at image size): outside it every target frame's latents are the
    source branch's, bit for bit, inside it the edit; with local blend the exported mask is the blend's within it."""
    tok, emb, latents, model = world
    plan = _plan(tok, emb)
    free = sample_edit(model, inversion, plan)
    region = torch.zeros(1, 1, 128, 128)
    region[..., 64:] = 1  # the right half of the frame, every frame
    res = sample_edit(model, inversion, plan, region=region)
    source = res.source.unsqueeze(0).expand_as(res.edited)
    assert torch.equal(res.edited[..., :8], source[..., :8])
    assert (res.edited[..., 8:] - source[..., 8:]).abs().flatten(2).amax(-1).gt(1e-3).all()  # every frame edits
    assert torch.equal(res.blend_mask, torch.cat([torch.zeros(1, FRAMES, 1, 16, 8), torch.ones(1, FRAMES, 1, 16, 8)],
                                                 -1))
    assert not res.blend_outline  # the user's region gets the composite's margin
    assert torch.allclose(sample_edit(model, inversion, plan, region=torch.ones(16, 16)).edited, free.edited, atol=1e-4)
    # per frame, with local blend: the masks multiply
    per_frame = torch.zeros(FRAMES, 16, 16)
    per_frame[1:] = 1
    blended = _plan(tok, emb, blend_words="ball", mask_threshold=0.3)
    both = sample_edit(model, inversion, blended, region=per_frame)
    alone = sample_edit(model, inversion, blended)
    assert torch.equal(both.edited[:, 0], both.source[0].unsqueeze(0))
    assert torch.equal(both.blend_mask, alone.blend_mask * per_frame[None, :, None])
    assert both.blend_mask[:, 1:].sum() > 0
    assert both.blend_outline and alone.blend_outline  # a recolour's outline blend, within the region, stays one
    # a soft region (a feathered mask) edits in part; the exported mask is where the region is above 1/255 (an 8-bit
    # mask's noise is not region), so that the composite, which reads the mask above 1/2, keeps what it edited
    soft = torch.full((16, 16), 0.4)
    soft[:, :4] = 0.5 / 255  # a mask's 8-bit noise: not part of the region
    half = sample_edit(model, inversion, plan, region=soft)
    src = half.source.unsqueeze(0).expand_as(half.edited)
    inside, outside = ((half.edited[..., k] - src[..., k]).abs().amax() for k in (slice(4, None), slice(None, 4)))
    assert outside < 0.05 * inside
    assert torch.equal(half.blend_mask[0, :, 0], (soft > 0.01).float().expand(FRAMES, -1, -1))
    from vp2p_core import CompositeOptions, composite_mask

    pasted = composite_mask(half.blend_mask, (64, 64), CompositeOptions(mask_dilation=0, feather=0))
    assert pasted[..., 16:].eq(1).all() and pasted[..., :16].eq(0).all()  # before: 0 everywhere (0.4 < 1/2)
    for bad, message in [(torch.ones(2, 16, 16), "region: 2 masks of \\(16, 16\\) for a clip of 3 frames"),
                         (torch.full((16, 16), 1.5), "region: expected values in 0..1, got 1.5..1.5"),
                         (torch.ones(3, 2, 16, 16), "region: expected a mask \\[h, w\\]"),
                         (torch.ones(16, 0), "region: expected a mask \\[h, w\\]")]:
        with pytest.raises(VP2PInputError, match=message):
            sample_edit(model, inversion, plan, region=bad)


def test_null_text_checkpointing_gives_the_same_embeddings(world, inversion, monkeypatch):
    """Gradient checkpointing in null-text inversion recomputes activations (its checkpoints run), the embeddings are
    the same; auto turns it on only where the host's free memory is short of the iteration's activations (none
    known on a CPU), and the UNet's own checkpointing setting is as it was afterwards, on or off."""
    import torch.utils.checkpoint as checkpoint_module

    tok, emb, latents, model = world
    opts = InversionOptions(mode="null_text", steps=STEPS, guidance=7.5)
    calls = []
    plain = checkpoint_module.checkpoint
    monkeypatch.setattr(checkpoint_module, "checkpoint", lambda *a, **kw: calls.append(1) or plain(*a, **kw))
    for setting, free, on, before in [("on", None, True, False), ("auto", 1, True, False),
                                      ("auto", 2 ** 50, False, False), ("auto", None, False, False),
                                      ("off", 1, False, False), ("off", None, False, True)]:
        calls.clear()
        if before:
            model.unet.enable_gradient_checkpointing()
        inv = invert(model, latents, emb[:1], emb[2:3], SRC, options=opts.replace(null_text_checkpointing=setting),
                     host=Host(free_memory=lambda: free))
        assert inv.stats["gradient_checkpointing"] is on and bool(calls) is on, setting
        assert torch.allclose(inv.null_embeddings, inversion.null_embeddings, atol=1e-6, rtol=0), setting
        assert model.unet.is_gradient_checkpointing is before
        model.unet.disable_gradient_checkpointing()
    assert "null_text_checkpointing" not in opts.cache_key()  # the same embeddings: the same cache entry


def test_several_targets_share_the_source_branch(world, inversion):
    """Two targets in one call: one source branch, and each target's edit as its own single-target run."""
    tok, emb, latents, model = world
    two = sample_edit(model, inversion, _plan(tok, emb, targets=(TGT, "a green ball on grass")))
    one = sample_edit(model, inversion, _plan(tok, emb))
    assert two.edited.shape == (2, FRAMES, 4, 16, 16)
    assert two.stats["forwards"] == STEPS * 5  # 1 source + 2 x 2 targets
    assert torch.allclose(two.edited[0], one.edited[0], atol=1e-4)
    green = sample_edit(model, inversion, _plan(tok, emb, targets=("a green ball on grass",)))
    assert torch.allclose(two.edited[1], green.edited[0], atol=1e-4)  # each target its own prompt's edit
    assert (two.edited[1] - two.edited[0]).abs().max() > 1e-2
    assert two.attention_maps.shape[:2] == (3, FRAMES)


class MaterialisedTemporalReplace:
    """Reference form of temporal self-replace: the map is built, the source's copied onto the targets, applied."""

    def __init__(self, state):
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        h = attn.heads
        qh = attention.split_heads(attn.to_q(hidden_states), h)
        kh = attention.split_heads(attn.to_k(hidden_states), h)
        vh = attention.split_heads(attn.to_v(hidden_states), h)
        probs = attention.attention_probs(qh, kh, attn.scale)
        ctrl = self.state.controller
        d = self.state.extra.get("pixels", 0)
        if ctrl is not None and ctrl.self_replace_active("temporal", hidden_states.shape[1]):
            n = ctrl.controlled_clips * d
            probs = torch.cat([attention.share_source_rows(probs[:n], ctrl.controlled_clips, ctrl.source_index,
                                                           ctrl.target_indices), probs[n:]])
        out = torch.matmul(probs.to(vh.dtype), vh)
        return attention.project_out(attn, attention.merge_heads(out).to(hidden_states.dtype))


@pytest.mark.parametrize("on", ["temporal", "frame", "both"])
def test_memory_free_self_replace_equals_materialised(world, inversion, on, monkeypatch):
    tok, emb, latents, model = world
    plan = _plan(tok, emb, self_replace=1.0, self_replace_on=on)
    fast = sample_edit(model, inversion, plan)
    procs = [m for m in model.unet.modules() if isinstance(getattr(m, "processor", None), TemporalAttnProcessor)]
    frame_calls = []

    def materialised_frame(self, attn, hidden_states, **kw):
        """Reference form for frame attention: build P_src = softmax(Q_src K_src^T), copy it to targets."""
        st = self.state
        f = st.num_frames
        bf, n, c = hidden_states.shape
        b = bf // f
        x = hidden_states.view(b, f, n, c)
        q = attention.split_heads(attn.to_q(hidden_states), attn.heads)  # [(b f), h, n, d]
        k = attention.split_heads(attn.to_k(x[:, 0]), attn.heads).repeat_interleave(f, 0)
        v = attention.split_heads(attn.to_v(x[:, 0]), attn.heads).repeat_interleave(f, 0)
        p = attention.attention_probs(q, k, attn.scale)
        ctrl = st.controller
        if ctrl is not None and ctrl.self_replace_active("frame", n):
            m = ctrl.controlled_clips * f
            p = torch.cat([attention.share_source_rows(p[:m], ctrl.controlled_clips, 0, ctrl.target_indices), p[m:]])
        frame_calls.append(1)
        return attention.project_out(attn, attention.merge_heads(torch.matmul(p, v)))

    try:
        for m in procs:
            m.set_processor(MaterialisedTemporalReplace(m.processor.state))
        monkeypatch.setattr(attention.FrameAttnProcessor, "__call__", materialised_frame)
        slow = sample_edit(model, inversion, plan)
    finally:
        for m in procs:
            m.set_processor(TemporalAttnProcessor(m.processor.state))
    assert frame_calls
    # fp32 sums in another order drift by ~1e-4 over the 8 steps; a wrong replacement moves them by ~1e-1
    drift = float((fast.edited - slow.edited).abs().max())
    none = sample_edit(model, inversion, _plan(tok, emb, self_replace=0.0))
    effect = float((none.edited - fast.edited).abs().max())  # self-replace really acted
    print(f"self-replace on {on}: materialised vs memory-free {drift:.2e}, effect {effect:.2e}")
    assert drift < 5e-4 and effect > 100 * drift, (drift, effect)


def test_only_read_cross_attention_maps_are_materialised(world, inversion, monkeypatch):
    tok, emb, latents, model = world
    shapes = []
    real = attention.attention_probs

    def spy(q, k, scale):
        shapes.append(tuple(k.shape))
        return real(q, k, scale)

    monkeypatch.setattr(attention, "attention_probs", spy)
    sample_edit(model, inversion, _plan(tok, emb, blend_words="ball", self_replace=1.0, self_replace_on="both"))
    assert shapes and all(s[-2] == 77 for s in shapes)  # text keys only: no self/temporal map is ever built
    shapes.clear()
    plan = _plan(tok, emb, cross_replace=0.0)
    plan.store_maps = False
    sample_edit(model, inversion, plan)
    assert shapes == []


def test_tuning_trains_only_the_trainable_set_and_is_seeded(world):
    tok, emb, latents, _ = world
    model = VideoModel.from_unet(tiny_unet())
    before = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    with trained_weights(model):
        d1 = one_shot_tune(model, latents, emb[:1], SRC, options=TuneOptions(steps=3, learning_rate=1e-3, seed=7))
        changed = {n for n, p in model.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trainable_parameter_names(model.unet))
    assert all(torch.equal(p, before[n]) for n, p in model.unet.named_parameters())  # restored
    assert len(d1.losses) == 3 and model.delta_fingerprint == ""
    with trained_weights(model):
        d2 = one_shot_tune(model, latents, emb[:1], SRC, options=TuneOptions(steps=3, learning_rate=1e-3, seed=7))
    assert d1.losses == d2.losses and all(torch.equal(d1.tensors[k], d2.tensors[k]) for k in d1.tensors)


def test_a_tuning_that_fails_leaves_no_gradients_behind(world, monkeypatch):
    """A step that fails between its backward and its zero_grad (out of memory in the optimiser) left its
    gradients on the shared UNet's parameters, where the next tuning's first backward added to them."""
    tok, emb, latents, _ = world
    model = VideoModel.from_unet(tiny_unet())

    def out_of_memory(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", out_of_memory)
    with trained_weights(model), pytest.raises(RuntimeError, match="out of memory"):
        one_shot_tune(model, latents, emb[:1], SRC, options=TuneOptions(steps=2))
    assert all(p.grad is None for p in model.unet.parameters())


def test_tuning_options_run(world):
    tok, emb, latents, _ = world
    model = VideoModel.from_unet(tiny_unet(prediction_type="v_prediction"), prediction_type="v_prediction")
    d = one_shot_tune(model, latents, emb[:1], SRC,
                      options=TuneOptions(steps=2, gradient_checkpointing=True, precision="bf16"))
    assert len(d.losses) == 2 and all(torch.isfinite(torch.tensor(d.losses)))
    with pytest.raises(VP2PInputError, match="precision"):
        one_shot_tune(model, latents, emb[:1], SRC, options=TuneOptions(steps=1, precision="fp8"))


def test_delta_and_inversion_round_trip_bit_for_bit(world, inversion, tmp_path):
    tok, emb, latents, model = world
    fresh = VideoModel.from_unet(tiny_unet())
    delta = one_shot_tune(fresh, latents, emb[:1], SRC, options=TuneOptions(steps=1))
    delta.save(tmp_path / "d.safetensors")
    back = Delta.load(tmp_path / "d.safetensors")
    assert back.tensors.keys() == delta.tensors.keys()
    assert all(torch.equal(back.tensors[k], delta.tensors[k]) for k in delta.tensors)
    assert (back.base_fingerprint, back.num_frames, back.prompt, back.steps, back.losses, back.prediction_type) == \
        (delta.base_fingerprint, FRAMES, SRC, 1, delta.losses, "epsilon")
    assert torch.equal(back.source_thumbnail, latent_thumbnail(latents)) and back.fingerprint == delta.fingerprint
    inversion.save(tmp_path / "i.safetensors")
    inv = Inversion.load(tmp_path / "i.safetensors")
    for name in ("x_T", "source_embedding", "timesteps", "null_embeddings", "trajectory", "source_thumbnail"):
        assert torch.equal(getattr(inv, name), getattr(inversion, name)), name
    assert (inv.mode, inv.guidance, inv.prompt, inv.model_fingerprint, inv.schedule) == \
        (inversion.mode, inversion.guidance, inversion.prompt, inversion.model_fingerprint, inversion.schedule)
    assert not list(tmp_path.glob("*.tmp"))


def test_files_for_another_model_or_clip_are_refused(world, inversion, tmp_path):
    tok, emb, latents, model = world
    other = VideoModel.from_unet(tiny_unet(seed=1))
    delta = one_shot_tune(VideoModel.from_unet(tiny_unet()), latents, emb[:1], SRC, options=TuneOptions(steps=1))
    with pytest.raises(VP2PInputError, match="delta: made for the model"):
        apply_delta(other, delta)
    same = VideoModel.from_unet(tiny_unet())
    with pytest.raises(VP2PInputError, match="tuned on 3 frames, but the clip has 4"):
        apply_delta(same, delta, num_frames=4)
    with pytest.raises(VP2PInputError, match="inversion: made with the model"):
        sample_edit(other, inversion, _plan(tok, emb))
    with pytest.raises(VP2PInputError, match="4 frames, but the inversion was made from 3"):
        sample_edit(model, inversion, _plan(tok, emb), num_frames=4)
    # a file holding a weight tuning never trains would overwrite the base every model shares, for good: only the
    # trained weights are restored after a stage
    import dataclasses

    conv = dict(same.unet.named_parameters())["conv_in.weight"]
    base = conv.detach().clone()
    foreign = dataclasses.replace(delta, tensors={**delta.tensors, "conv_in.weight": torch.zeros_like(base)})
    with pytest.raises(VP2PInputError, match=r"^delta: holds 'conv_in.weight', which one-shot tuning does not "):
        with trained_weights(same, foreign):
            pass
    assert torch.equal(conv, base)
    inversion.save(tmp_path / "i.safetensors")
    with pytest.raises(VP2PInputError, match="not a delta"):
        Delta.load(tmp_path / "i.safetensors")
    with pytest.raises(VP2PInputError, match="safetensors"):
        Delta.load(tmp_path / "i.pt")


def test_a_delta_refuses_another_clip_of_the_same_size_and_another_prediction_type(world, tmp_path):
    """A delta keeps its clip's thumbnail and prediction type: the same clip re-encoded passes, another clip of the
    same length and size is refused (the frame count alone let a model tuned on one clip invert another), so is the
    model read with another prediction type; a file saved before either checks as it did."""
    import dataclasses

    from vp2p_core.tuning import check_delta

    tok, emb, latents, model = world
    fresh = VideoModel.from_unet(tiny_unet())
    delta = one_shot_tune(fresh, latents, emb[:1], SRC, options=TuneOptions(steps=1))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    check_delta(fresh, delta, latents=latents + 0.01 * noise)  # the same clip re-encoded
    other = torch.randn(latents.shape, generator=torch.Generator().manual_seed(12)) * 0.8
    with pytest.raises(VP2PInputError, match="^latent: tuned on another clip: frame"):
        check_delta(fresh, delta, "latent", latents=other)
    with pytest.raises(VP2PInputError, match="tuned on 3 frames, but the clip has 2"):
        check_delta(fresh, delta, latents=latents[:2])
    v = VideoModel.from_unet(tiny_unet(), prediction_type="v_prediction")
    with pytest.raises(VP2PInputError, match="tuned with the model read as epsilon, but this model predicts v_pred"):
        check_delta(v, delta)
    old = dataclasses.replace(delta, source_thumbnail=None, prediction_type="")
    old.save(tmp_path / "old.safetensors")
    back = Delta.load(tmp_path / "old.safetensors")
    assert back.source_thumbnail is None and back.prediction_type == ""
    check_delta(v, back, latents=other)  # saved before: its frame count is all it can be checked by


def test_inversion_refuses_another_clip_of_the_same_size(world, inversion, tmp_path):
    """An inversion keeps a thumbnail of its clip: the same clip re-encoded passes, another clip of the same length
    and size is refused, and a file saved before there were thumbnails checks the shape alone."""
    tok, emb, latents, model = world
    assert inversion.source_thumbnail.shape == (FRAMES, 4, 16, 16)
    g = torch.Generator().manual_seed(11)
    inversion.check_latents(latents)
    inversion.check_latents(latents * 1.02)  # a slight change of light
    inversion.check_latents(latents + 0.02 * torch.randn(latents.shape, generator=g))  # a re-encode's noise
    inversion.check_latents(latents.half())  # an fp16 VAE
    other = torch.randn(latents.shape, generator=g) * 0.8
    for name, wrong in [("another clip", other), ("the frames reversed", latents.flip(0)),
                        ("one frame another clip's", torch.cat([latents[:2], other[2:]])),
                        ("brighter by a third", latents * 1.35), ("a NaN", latents.clone().fill_(float("nan")))]:
        with pytest.raises(VP2PInputError, match="inversion: made from another clip"):
            inversion.check_latents(wrong)
    inversion.save(tmp_path / "i.safetensors")
    Inversion.load(tmp_path / "i.safetensors").check_latents(latents)
    with pytest.raises(VP2PInputError, match="^filename: made from another clip"):
        Inversion.load(tmp_path / "i.safetensors").check_latents(other, "filename")
    old = copy.copy(inversion)
    old.source_thumbnail = None
    old.save(tmp_path / "old.safetensors")
    Inversion.load(tmp_path / "old.safetensors").check_latents(other)  # no thumbnail: only the shape is known
    bad = copy.copy(inversion)
    for thumbnail in (inversion.source_thumbnail[:2], inversion.source_thumbnail * math.inf):
        bad.source_thumbnail = thumbnail
        bad.save(tmp_path / "bad.safetensors")
        with pytest.raises(VP2PInputError, match="^filename: .*source_thumbnail"):
            Inversion.load(tmp_path / "bad.safetensors")


def test_inversion_refuses_a_long_clip_with_one_frame_of_another():
    """Every frame is checked on its own: one frame of 48 a quarter of its own RMS away (0.036 over the whole
    clip, which one RMS for the clip would let through) is refused; the same clip with 2% more light passes."""
    g = torch.Generator().manual_seed(12)
    latents = torch.randn(48, 4, 64, 64, generator=g)
    inv = Inversion(x_T=latents, source_embedding=torch.zeros(1, 77, 8), timesteps=torch.arange(2), mode="fast",
                    guidance=7.5, prompt=SRC, model_fingerprint="m", schedule=DDIMConfig(),
                    source_thumbnail=latent_thumbnail(latents))
    assert inv.source_thumbnail.shape == (48, 4, 16, 16)
    inv.check_latents(latents * 1.02)
    one = latents.clone()
    stored = inv.source_thumbnail[30]
    one[30] += F.interpolate((0.25 * stored.pow(2).mean().sqrt() * torch.randn(stored.shape, generator=g))[None],
                             scale_factor=4)[0]  # constant over each thumbnail cell: exactly 25% of frame 30's RMS
    with pytest.raises(VP2PInputError, match="frame 30 of the latent differs from the inverted clip's by 2[0-9]%"):
        inv.check_latents(one)


def test_inversion_modes_and_errors(world):
    tok, emb, latents, model = world
    inv = invert(model, latents, emb[:1], None, SRC, options=InversionOptions(mode="negative_prompt", steps=4))
    res = sample_edit(model, inv, _plan(tok, emb))
    assert res.stats["forwards"] == 4 * 3 and torch.isfinite(res.edited).all()
    with pytest.raises(VP2PInputError, match="mode"):
        invert(model, latents, emb[:1], emb[2:3], SRC, options=InversionOptions(mode="exact"))
    with pytest.raises(VP2PInputError, match="empty_embedding"):
        invert(model, latents, emb[:1], None, SRC, options=InversionOptions(mode="null_text"))
    with pytest.raises(VP2PInputError, match="latents"):
        invert(model, latents[0], emb[:1], emb[2:3], SRC)
    with pytest.raises(VP2PInputError, match="lr_scale"):
        invert(model, latents, emb[:1], emb[2:3], SRC, options=InversionOptions(lr_scale=0))


def test_null_text_stops_early_without_extra_forwards(world):
    """With a loose bound every step stops at its first loss: 1 cond + 1 uncond forward, no backward."""
    tok, emb, latents, model = world
    inv = invert(model, latents, emb[:1], emb[2:3], SRC, options=InversionOptions(steps=4, early_stop=1.0))
    assert inv.stats["inner_iterations"] == [1, 1, 1, 1] and inv.stats["null_backwards"] == 0
    assert inv.stats["forwards"] == 4 + 4 * 2  # DDIM inversion + (cond + uncond) per step


REFERENCE_BUDGET = dict(inner_steps=10, lr_scale=1.0, early_stop=1e-5, early_stop_ratio=0.0)


def _reference_null_optimization(model, latents, cond, empty, steps, guidance, inner_steps):
    """The official null_optimization loop, transcribed: a new Adam per step at lr 1e-2 * (1 - i/100) seeded with
    the last embedding; step first, then test the loss; the guided step with the last embedding."""
    sched = DDIMSchedule(model.schedule, steps)
    with torch.no_grad():
        x, traj = latents, [latents]
        for t in sched.timesteps.flip(0).tolist():
            x = sched.next_step(video_forward(model.unet, x, t, cond, FRAMES), t, x)
            traj.append(x)
    e, x, nulls = empty.clone(), traj[-1], []
    for i, t in enumerate(sched.timesteps.tolist()):
        e = e.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([e], lr=1e-2 * (1.0 - i / 100.0))
        with torch.no_grad():
            eps_c = video_forward(model.unet, x, t, cond, FRAMES)
        for _ in range(inner_steps):
            eps_u = video_forward(model.unet, x, t, e, FRAMES)
            loss = torch.nn.functional.mse_loss(sched.prev_step(eps_u + guidance * (eps_c - eps_u), t, x),
                                                traj[steps - 1 - i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if loss.item() < 1e-5 + i * 2e-5:
                break
        nulls.append(e.detach()[0])
        with torch.no_grad():
            eps_u = video_forward(model.unet, x, t, e, FRAMES)
            x = sched.prev_step(eps_u + guidance * (eps_c - eps_u), t, x)
    return torch.stack(nulls), x


def test_reference_budget_keeps_the_reference_null_embeddings(world):
    """At the reference's budget (no step gets under its bound on this model) our loop makes the official loop's
    embeddings and reconstruction: the faster default is a choice of budget, not another algorithm."""
    tok, emb, latents, model = world
    flags = [(p, p.requires_grad) for p in model.unet.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)  # the reference's backward also fills every weight's grad: same embeddings
        ref_nulls, ref_x = _reference_null_optimization(model, latents, emb[:1], emb[2:3], 4, 7.5, inner_steps=3)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    inv = invert(model, latents, emb[:1], emb[2:3], SRC,
                 options=InversionOptions(steps=4, guidance=7.5, **{**REFERENCE_BUDGET, "inner_steps": 3}))
    assert inv.stats["inner_iterations"] == [3, 3, 3, 3]
    torch.testing.assert_close(inv.null_embeddings, ref_nulls, rtol=0, atol=1e-6)
    torch.testing.assert_close(inv.trajectory[-1], ref_x, rtol=0, atol=1e-5)


def test_the_early_stop_bound_rises_over_the_schedule_as_the_references_over_its_50_steps(world, monkeypatch):
    """The absolute bound is the reference's early_stop + i*2e-5 up to 50 steps; past 50 the same rise is spread
    over the schedule (at 500 steps it reached 1e-2 and ended every later step before its first iteration)."""
    import vp2p_core.inversion as inversion_module

    tok, emb, latents, model = world
    bounds = {}
    stops = inversion_module._stops
    monkeypatch.setattr(inversion_module, "_stops", lambda loss, first, bound, ratio: (
        bounds.setdefault(len(bounds), bound), stops(loss, first, bound, ratio))[1])
    for steps in (8, 100):
        bounds.clear()
        invert(model, latents[:1], emb[:1], emb[2:3], SRC, options=InversionOptions(
            mode="null_text", steps=steps, inner_steps=1, early_stop=1e-5, early_stop_ratio=0.0))
        assert len(bounds) == steps
        rise = 2e-5 * min(1.0, 50 / steps)
        assert all(abs(b - (1e-5 + i * rise)) < 1e-12 for i, b in bounds.items()), steps
    assert abs(bounds[99] - (1e-5 + 99e-5)) < 1e-12  # the reference's last bound, 1e-5 + 49 * 2e-5, as near


def test_early_stop_ratio_stops_once_the_loss_has_fallen_that_far(world):
    """A step stops at the first loss under ratio x its first loss; the embedding kept is the one that loss was
    measured with, and its guided step (already computed) is the next latent, with no extra forward."""
    tok, emb, latents, model = world
    opts = dict(steps=4, guidance=7.5, inner_steps=6, lr_scale=10.0)
    full = invert(model, latents, emb[:1], emb[2:3], SRC, options=InversionOptions(**opts, early_stop_ratio=0.0))
    losses = []
    import vp2p_core.inversion as inversion_mod
    real = inversion_mod._stops

    def spy(loss, first, bound, ratio):
        losses.append((loss, first))
        return real(loss, first, bound, ratio)

    inversion_mod._stops = spy
    try:
        ratio = 0.9
        cut = invert(model, latents, emb[:1], emb[2:3], SRC, options=InversionOptions(**opts, early_stop_ratio=ratio))
    finally:
        inversion_mod._stops = real
    iters = cut.stats["inner_iterations"]
    assert sum(iters) < sum(full.stats["inner_iterations"]), "the ratio never fired on this model"
    k = 0
    for n in iters:  # each step: every loss before the last is above ratio x first, the last one is below
        step = losses[k:k + n]
        first = step[0][0]
        assert all(loss >= ratio * first for loss, _ in step[:-1])
        if n < opts["inner_steps"]:
            assert step[-1][0] < ratio * first
        k += n
    # forwards: DDIM + per step 1 cond + n losses + 1 guided step only where the step ran out
    ran_out = sum(1 for n in iters if n == opts["inner_steps"])
    assert cut.stats["forwards"] == 4 + 4 + sum(iters) + ran_out
    assert cut.stats["null_backwards"] == sum(iters) - (4 - ran_out)


def test_fast_inversion_keeps_only_the_ends_of_the_ddim_trajectory(world):
    """Fast inversion needs x_T alone: the DDIM loop keeps [x_0, x_T], bit-identical to the ends of the full list."""
    from vp2p_core.inversion import ddim_inversion

    tok, emb, latents, model = world
    sched = DDIMSchedule(model.schedule, 4)
    full = ddim_inversion(model, latents, emb[:1], sched)
    ends = ddim_inversion(model, latents, emb[:1], sched, keep_all=False)
    assert len(full) == 5 and len(ends) == 2
    assert torch.equal(ends[0], full[0]) and torch.equal(ends[1], full[-1])
    # null-text's path waits elsewhere (the CPU, when the UNet is on a GPU): every latent but x_T goes there
    kept = ddim_inversion(model, latents, emb[:1], sched, keep_on=torch.device("meta"))
    assert len(kept) == 5 and torch.equal(kept[-1], full[-1]) and all(x.device.type == "meta" for x in kept[:-1])
    inv = invert(model, latents, emb[:1], emb[2:3], SRC, options=InversionOptions(steps=4, mode="fast"))
    assert torch.equal(inv.x_T, full[-1])


def test_null_text_learning_rate_decays_over_long_schedules(world, monkeypatch):
    """The reference's rate 1e-2 * (1 - i/100) is kept for its 50 steps; over more steps it would reach 0 at step 100
    and then turn negative (Adam refuses it, after a hundred steps' work). Past 50 steps the decay stretches."""
    tok, emb, latents, model = world
    rates = []
    adam = torch.optim.Adam

    def recording(params, lr):
        rates.append(lr)
        return adam(params, lr=lr)

    monkeypatch.setattr(torch.optim, "Adam", recording)
    for steps in (50, 120):
        rates.clear()
        invert(model, latents[:1, :, :8, :8], emb[:1], emb[2:3], SRC,
               options=InversionOptions(mode="null_text", steps=steps, inner_steps=1, lr_scale=1.0))
        assert len(rates) == steps and all(b < a for a, b in zip(rates, rates[1:])) and rates[-1] > 0
        reference = [1e-2 * (1 - i / 100) for i in range(steps)] if steps <= 50 else \
            [1e-2 * (1 - i / (2 * steps)) for i in range(steps)]
        assert rates == pytest.approx(reference, rel=1e-12)


def test_edit_refuses_an_inversion_of_another_schedule_or_latent_size(world, inversion):
    """The fingerprint is the weights': the same weights read as v-prediction (another ComfyUI sampling node) would
    take an eps inversion as theirs."""
    import dataclasses

    tok, emb, latents, model = world
    v_model = dataclasses.replace(model, schedule=dataclasses.replace(model.schedule, prediction_type="v_prediction"))
    with pytest.raises(VP2PInputError, match="prediction_type 'epsilon' \\(the model: 'v_prediction'\\)"):
        sample_edit(v_model, inversion, _plan(tok, emb), options=SamplerOptions())
    # latents the UNet's downsampling does not divide (a 16:9 clip at 512x288 in SD: 64x36 -> 32x18 -> 16x9 -> 8x5)
    # edit, their attention maps on the grid the downsamplers make (rounding up); they were refused
    odd = invert(model, latents[:, :, :15], emb[:1], emb[2:3], SRC, options=InversionOptions(mode="fast", steps=2))
    res = sample_edit(model, odd, _plan(tok, emb, blend_words="ball", mask_threshold=0.9))
    assert res.edited.shape[-2:] == (15, 16) and res.blend_mask.shape[-2:] == (15, 16)
    assert res.attention_maps.shape[2:4] == (8, 8) and torch.isfinite(res.edited).all()
    assert 0 < res.blend_mask.mean() < 1  # the word's maps placed, not all or nothing
    # another source prompt is named as such, before its embedding (which differs too) is compared
    other_prompt = build_edit_plan(tok, "a green ball on grass", [TGT], options=EditOptions())
    other_prompt.source_embedding, other_prompt.target_embeddings, other_prompt.empty_embedding = \
        emb[3:4], emb[1:2], emb[2:3]
    with pytest.raises(VP2PInputError, match="source_prompt: 'a green ball on grass' is not the prompt"):
        sample_edit(model, inversion, other_prompt, options=SamplerOptions())
    # the same words in other case and spacing are the same prompt to CLIP's tokenizers (it was refused)
    capitals = build_edit_plan(tok, "A Red  Ball on grass", ["A Blue ball on grass"], options=EditOptions())
    capitals.source_embedding, capitals.target_embeddings, capitals.empty_embedding = emb[:1], emb[1:2], emb[2:3]
    assert SRC == "a red ball on grass"
    from vp2p_core.text import same_prompt

    # ComfyUI looks an embedding's name up as written: those words keep their case
    assert not same_prompt("embedding:MyStyle a red ball", "embedding:mystyle a red ball")
    assert same_prompt("embedding:MyStyle A Red ball", "embedding:MyStyle a red  ball")
    sample_edit(model, inversion, capitals, options=SamplerOptions(), num_frames=latents.shape[0])
    # the edit's source prompt encoded by another CLIP than the inversion's (here: another prompt's embedding)
    other_clip = _plan(tok, emb)
    other_clip.source_embedding = emb[3:4]
    with pytest.raises(VP2PInputError, match="clip: the source prompt's embedding is .*% away from the one the inv"):
        sample_edit(model, inversion, other_clip, options=SamplerOptions())
    # an inversion saved before the steps' limit of 500, with more: refused naming the inversion
    many = dataclasses.replace(inversion, timesteps=torch.arange(600).flip(0))
    with pytest.raises(VP2PInputError, match="inversion: made with 600 DDIM steps, more than the 500"):
        sample_edit(model, many, _plan(tok, emb), options=SamplerOptions())


def test_a_hand_made_inversion_file_is_refused_by_name(inversion, tmp_path):
    """A file lacking an entry its reader needs, or a null-text inversion with a null embedding short, is refused
    naming the input and the file (before: a bare KeyError, or an IndexError steps into the edit)."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = tmp_path / "inv.safetensors"
    inversion.save(path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    short = dict(tensors, null_embeddings=tensors["null_embeddings"][:-1])
    save_file(short, str(path), metadata=meta)
    with pytest.raises(VP2PInputError, match=f"inversion: .*of {STEPS} steps with {STEPS - 1} null embeddings"):
        Inversion.load(path, what="inversion")
    save_file(tensors, str(path), metadata={k: v for k, v in meta.items() if k != "model_fingerprint"})
    with pytest.raises(VP2PInputError, match="inversion: .* lacks metadata model_fingerprint"):
        Inversion.load(path, what="inversion")


def test_a_delta_records_the_inflation_it_was_tuned_under(world, tmp_path):
    """The temporal layers learn what each frame's attention sees: a delta tuned under one frame_attention or
    group_norm is refused by a model inflated with the other, by name; a delta saved before it recorded them fits."""
    from vp2p_core.inflation import set_frame_attention

    tok, emb, latents, _ = world
    model = VideoModel.from_unet(tiny_unet(), group_norm="clip")
    delta = one_shot_tune(model, latents, emb[:1], SRC, options=TuneOptions(steps=1))
    delta.save(tmp_path / "d.safetensors")
    delta = Delta.load(tmp_path / "d.safetensors")
    assert delta.inflation == {"frame_attention": "first", "group_norm": "clip"}
    apply_delta(model, delta)
    other = VideoModel.from_unet(tiny_unet(), group_norm="frame")
    with pytest.raises(VP2PInputError, match="delta: tuned with group_norm 'clip', but this model's is 'frame'"):
        apply_delta(other, delta)
    set_frame_attention(model.unet, "first_prev")
    with pytest.raises(VP2PInputError, match="set InflateUNet's frame_attention to 'first'"):
        apply_delta(model, delta)
    delta.inflation = {}  # saved before deltas recorded it
    apply_delta(model, delta)
    delta.inflation = {"frame_attention": 1}
    delta.save(tmp_path / "bad.safetensors")
    with pytest.raises(VP2PInputError, match="delta: .*bad.safetensors' records an inflation of"):
        Delta.load(tmp_path / "bad.safetensors", what="delta")


def test_null_text_checks_the_stop_button_inside_a_step(world):
    """One null-text step is up to inner_steps forward and backward passes (times the windows): the host's
    interrupt is asked before each, not only once per step."""
    tok, emb, latents, model = world
    calls = []
    host = Host(interrupt=lambda: calls.append(1))
    invert(model, latents, emb[:1], emb[2:3], SRC, host=host,
           options=InversionOptions(mode="null_text", steps=2, inner_steps=3, early_stop=0.0, early_stop_ratio=0.0))
    # DDIM's 2 steps (each before its one window and after its step), null-text's 2, and its 3 inner iterations
    # in each
    assert len(calls) == 2 * 2 + 2 + 2 * 3


def test_decoupled_guidance_gives_the_target_the_empty_prompt_and_the_source_its_null_embeddings(world, inversion):
    """Null-text inversion's embeddings belong to the source branch. With decoupled guidance (the default) the
    target's unconditional prediction uses the empty prompt, so an edit to the same prompt without attention control
    is plain guided sampling from x_T; without it the target replays the source exactly. A negative-prompt inversion
    (the source prompt as the unconditional) is replayed by the same edit, whichever the target's unconditional."""
    tok, emb, latents, model = world
    plan = build_edit_plan(tok, SRC, SRC, options=EditOptions(edit_mode="none"))
    plan.source_embedding, plan.target_embeddings, plan.empty_embedding = emb[:1], emb[:1], emb[2:3]
    plain = _guided_reconstruction(model, inversion.x_T, emb[:1], emb[2:3], STEPS, 7.5)
    decoupled = sample_edit(model, inversion, plan)
    coupled = sample_edit(model, inversion, plan, options=SamplerOptions(decoupled_guidance=False))
    assert torch.allclose(decoupled.edited[0], plain, atol=1e-3)
    assert torch.allclose(coupled.edited[0], coupled.source, atol=1e-4)
    assert (decoupled.edited[0] - coupled.edited[0]).abs().max() > 0.1, "the test needs the two to differ"
    negative = invert(model, latents, emb[:1], emb[2:3], SRC, options=InversionOptions(mode="negative_prompt",
                                                                                       steps=STEPS))
    replay = sample_edit(model, negative, plan)
    assert torch.allclose(replay.edited[0], replay.source, atol=1e-4)


def test_a_trajectory_made_at_another_guidance_is_not_replayed(world, inversion, caplog):
    """The stored source trajectory is the null-text inversion's at its guidance: an edit at another guidance
    recomputes the source branch (one more forward per step) instead of replaying a path it would not take, and
    says that its source drifts (the null embeddings reproduce the clip at the inversion's guidance only)."""
    tok, emb, latents, model = world
    with caplog.at_level("WARNING", logger="vp2p_core.sampling"):
        same = sample_edit(model, inversion, _plan(tok, emb))
        assert not caplog.records
        other = sample_edit(model, inversion, _plan(tok, emb), options=SamplerOptions(guidance=5.0))
    assert "guidance 7.5, but the sampler's is 5" in caplog.text
    assert same.stats["reused_source_trajectory"] and same.stats["forwards"] == STEPS * 3
    assert not other.stats["reused_source_trajectory"] and other.stats["forwards"] == STEPS * 4
    assert (other.source - inversion.trajectory[-1]).abs().max() > 1e-2


def test_trained_weights_holds_no_parameter_a_stage_replaces():
    """A stage inside ``trained_weights`` may replace the UNet's parameters (make_trainable_copyable does, after
    ComfyUI's inference-mode load); the replaced ones must be freed, not kept alive beside the new (on a GPU: the
    whole UNet twice), and the block's end still restores the trainable weights into the new ones."""
    import gc
    import weakref

    model = tiny_video_model(torch.Generator().manual_seed(0))
    name = next(n for n in trainable_parameter_names(model.unet) if "attn_temp" in n)
    owner, attr = model.unet.get_submodule(name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1]
    before = getattr(owner, attr).detach().clone()
    with trained_weights(model):
        old = weakref.ref(getattr(owner, attr))
        setattr(owner, attr, torch.nn.Parameter(getattr(owner, attr).detach() + 1.0))
        gc.collect()
        assert old() is None, "trained_weights kept a replaced parameter alive"
    assert torch.equal(getattr(owner, attr), before)
