"""Edit guidance (SamplerOptions.edit_guidance): the targets pushed away from the source prompt, with contrast rows
that see the targets' latents and attention control under the source's words."""
import pytest
import torch

from vp2p_core import (AttentionController, EditOptions, InversionOptions, SamplerOptions, VP2PInputError, VideoModel,
                       build_edit_plan, invert, sample_edit)
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

    def plan_for(target: str):
        plan = build_edit_plan(tok, SRC, target, options=EditOptions(blend_words="ball", self_replace_on="both",
                                                                        cross_replace=0.6, self_replace=0.8))
        plan.source_embedding, plan.empty_embedding = emb[:1], emb[2:3]
        plan.target_embeddings = toy_embed(tok, [target])
        return plan
    return model, inv, plan_for


def test_edit_guidance_off_is_the_plain_sampler_and_on_costs_one_pass_per_guided_step(setup):
    model, inv, plan_for = setup
    plan = plan_for(TGT)
    plain = sample_edit(model, inv, plan)
    off = sample_edit(model, inv, plan, options=SamplerOptions(edit_guidance=0.0, edit_guidance_steps=1.0))
    assert torch.equal(plain.edited, off.edited) and plain.stats["forwards"] == off.stats["forwards"]
    on = sample_edit(model, inv, plan, options=SamplerOptions(edit_guidance=3.0, edit_guidance_steps=0.6))
    assert on.stats["forwards"] == plain.stats["forwards"] + 3  # steps 0, 1, 2 of 5: one contrast clip each
    assert (on.edited - plain.edited).abs().max() > 1e-3
    assert torch.equal(on.source, plain.source)  # the source branch is untouched
    assert on.blend_mask.shape == plain.blend_mask.shape and on.attention_maps.shape == plain.attention_maps.shape
    later = sample_edit(model, inv, plan, options=SamplerOptions(edit_guidance=3.0, edit_guidance_steps=(0.6, 1.0)))
    assert later.stats["forwards"] == plain.stats["forwards"] + 2  # steps 3 and 4
    for bad in (dict(edit_guidance=-1.0), dict(edit_guidance_steps=1.5), dict(edit_guidance_steps=(0.8, 0.2))):
        with pytest.raises(VP2PInputError, match=next(iter(bad))):
            SamplerOptions(**bad)


def test_contrast_rows_are_the_target_under_the_source_words(setup):
    """With the source prompt as the target, target and contrast rows are the same computation (the same latents,
    words and attention control), so edit guidance adds nothing: the edit equals the plain one to round-off. A
    contrast row that missed the target's control (its injected maps or self-attention) would differ."""
    model, inv, plan_for = setup
    plan = plan_for(SRC)
    plain = sample_edit(model, inv, plan)
    guided = sample_edit(model, inv, plan, options=SamplerOptions(edit_guidance=5.0, edit_guidance_steps=1.0))
    assert guided.stats["forwards"] == plain.stats["forwards"] + STEPS
    torch.testing.assert_close(guided.edited, plain.edited, atol=1e-4, rtol=0)


def test_contrast_rows_take_the_source_maps_where_the_targets_do():
    """The controller's cross-attention edit on a batch with contrast rows: the targets' rows as without them, each
    contrast row the source's maps where its target takes the source's (alpha) and its own elsewhere, scaled by the
    target's reweighting; only the source and the targets feed local blend."""
    tok = ToyTokenizer()
    plan = build_edit_plan(tok, SRC, "a blue cube on grass",
                           options=EditOptions(cross_replace=0.5, blend_words="ball", blend_target_words="cube",
                                               reweight_words="blue", reweight_values="2"),
                           cross_replace_words={"blue": (0.0, 0.2)})
    ctrl = AttentionController(plan, num_steps=10, num_frames=2, latent_hw=(8, 8), blend_layers=["b"])
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 2, 2, 16, 77, generator=g).softmax(-1)  # [source, target, contrast], F, heads, N, 77
    for step in (0, 3, 7):
        ctrl.cur_step, ctrl.map_sum, ctrl.map_count = step, None, 0
        ctrl.contrast = False
        assert ctrl.controlled_clips == 2 and ctrl.target_indices == [1]
        without = ctrl.cross(probs[:2].clone(), "b")  # cross writes the edited maps over its input
        ctrl.map_sum, ctrl.map_count = None, 0
        ctrl.contrast = True
        assert ctrl.controlled_clips == 3 and ctrl.target_indices == [1, 2]
        with_rows = ctrl.cross(probs.clone(), "b")
        torch.testing.assert_close(with_rows[:2], without)
        alpha = ctrl.alpha[step][0][None, None, None, :]
        eq = ctrl.equalizer[0][None, None, None, :] if step < 5 else 1.0  # control acts in the first half only
        torch.testing.assert_close(with_rows[2], (probs[0] * alpha + probs[2] * (1 - alpha)) * eq)
        assert ctrl.map_sum.shape[0] == 2  # the contrast row's maps do not feed the blend
    ctrl.contrast = False
    blue = plan.cross_replace_words[0][0][0]  # 'blue' takes the source's maps for the first 0.2 of the steps only
    assert ctrl.equalizer.max() == 2.0 and not bool(ctrl.alpha[7][0].any())
    assert ctrl.alpha[3][0].sum() == 77 - len(blue) and not bool(ctrl.alpha[3][0, blue].any())


def test_contrast_rows_take_the_targets_control_at_the_source_tokens():
    """The contrast rows hold the source's words, so a target's per-token control moves to the source's tokens
    through the alignment: in a refine edit that inserts 'blue' (reweighted 2x, its own injection window), 'ball'
    and 'grass' keep their targets' values at their source positions, and the inserted word's weight and window
    land on no source token (they would, on 'ball', 'on' and 'grass', if read at the target's positions)."""
    from vp2p_core.text import word_token_indices

    tok = ToyTokenizer()
    source, target = "a ball on grass", "a big blue ball on grass"
    plan = build_edit_plan(tok, source, target, options=EditOptions(edit_mode="refine", cross_replace=0.5,
                                                                    reweight_words="blue", reweight_values="2"),
                           cross_replace_words={"blue": (0.0, 0.2)})
    ctrl = AttentionController(plan, num_steps=10, num_frames=1, latent_hw=(8, 8), blend_layers=[])
    assert ctrl.equalizer.max() == 2.0 and torch.equal(ctrl.contrast_equalizer, torch.ones(1, 77))
    for word in ("ball", "grass"):
        s_idx, t_idx = word_token_indices(source, word, tok), word_token_indices(target, word, tok)
        assert s_idx != t_idx  # the insertion shifts them
        torch.testing.assert_close(ctrl.contrast_alpha[:, 0, s_idx], ctrl.alpha[:, 0, t_idx])
    blue = word_token_indices(target, "blue", tok)
    assert not bool(ctrl.alpha[3, 0, blue].any()) and bool(ctrl.contrast_alpha[3, 0, :6].eq(1).all())
    # a word swap whose words keep their positions: the contrast rows' control is the target's own
    swap = build_edit_plan(tok, "a red ball on grass", "a blue ball on grass",
                           options=EditOptions(reweight_words="blue", reweight_values="2"))
    same = AttentionController(swap, num_steps=10, num_frames=1, latent_hw=(8, 8), blend_layers=[])
    assert torch.equal(same.contrast_alpha, same.alpha) and torch.equal(same.contrast_equalizer, same.equalizer)
    # a swap to a word of more tokens: the source's last padding position maps to no target token and keeps the
    # fill (weight 1, the plain window), not 0
    longer = build_edit_plan(tok, "a red ball on grass", "a big-red ball on grass",
                             options=EditOptions(reweight_words="big-red", reweight_values="2"))
    ctrl = AttentionController(longer, num_steps=10, num_frames=1, latent_hw=(8, 8), blend_layers=[])
    assert longer.mapper[0, 76].sum() == 0 and ctrl.contrast_equalizer[0, 76] == 1
    assert ctrl.contrast_equalizer[0, 2] == 2 and ctrl.contrast_equalizer.min() == 1
    assert torch.equal(ctrl.contrast_alpha[:, 0, 76], ctrl.contrast_alpha[:, 0, 75])
