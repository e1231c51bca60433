"""Seq-aligner mappers, word indices and the edit plan's validation."""
import pytest
import torch

from vp2p_core import EditOptions, VP2PInputError, build_edit_plan
from vp2p_core.seq_aligner import refinement_mapper, replacement_mapper
from vp2p_core.text import word_token_indices
from vp2p_world.tiny import ToyTokenizer


@pytest.fixture
def tok():
    return ToyTokenizer()


def test_word_indices_follow_tokens(tok):
    p = "a big-red ball on grass"
    assert word_token_indices(p, "a", tok) == [1]
    assert word_token_indices(p, "big-red", tok) == [2, 3]
    assert word_token_indices(p, "ball", tok) == [4]
    assert word_token_indices(p, "Ball", tok) == [4]
    assert word_token_indices(p, "cat", tok) == []


def test_replacement_mapper_single_token_swap_is_identity(tok):
    m = replacement_mapper("a red ball on grass", "a blue ball on grass", tok)
    assert torch.equal(m, torch.eye(77))


def test_replacement_mapper_spreads_multi_token_word(tok):
    m = replacement_mapper("a cat on grass", "a big-dog on grass", tok)
    assert m[2, 2] == 0.5 and m[2, 3] == 0.5  # 'cat' (token 2) -> 'big','dog' (tokens 2,3) at 1/2 each
    assert m[1, 1] == 1 and m[0, 0] == 1
    assert m[3, 4] == 1 and m[4, 5] == 1  # 'on', 'grass' stay aligned after the longer word
    assert torch.allclose(m.sum(1)[:6], torch.ones(6))


def test_replacement_needs_equal_word_counts(tok):
    with pytest.raises(VP2PInputError, match="same number of words"):
        replacement_mapper("a cat", "a fluffy cat", tok)


def test_refinement_mapper_inserted_word(tok):
    mapper, alphas = refinement_mapper("a cat", "a fluffy cat", tok)
    # y: [BOS a fluffy cat EOS] aligned to x: [BOS a cat EOS]; 'fluffy' is new (alpha 0)
    assert mapper[:5].tolist() == [0, 1, -1, 2, 3]
    assert alphas[:5].tolist() == [1, 1, 0, 1, 1]
    # the target's padding reads the source's, position for position after each EOS (the reference: position j)
    assert mapper[5:].tolist() == list(range(4, 76)) and alphas[5:].eq(1).all()


def test_refinement_mapper_shorter_target_reads_the_source_padding(tok):
    mapper, alphas = refinement_mapper("a small red ball on grass", "a ball", tok)
    # x: [BOS a small red ball on grass EOS] (8), y: [BOS a ball EOS] (4): y's padding reads x's, never 'on grass'
    assert mapper[4:].tolist() == list(range(8, 77)) + [76] * 4 and alphas[4:].eq(1).all()


def _shipped_clip_tokenizer():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "vp2p_world" / "weights" / "tokenizer"
    if not (folder / "vocab.json").exists():
        pytest.skip("shipped CLIP tokenizer not present")
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def test_replacement_mapper_gives_every_target_token_a_source():
    """A source word of more tokens leaves fewer positions for the source's padding; every target position still
    reads the source (before, the last target positions read nothing, so their attention summed to less than 1),
    and punctuation after the last word pairs up instead of shifting EOS and padding by one."""
    clip = _shipped_clip_tokenizer()
    m = replacement_mapper("a axolotl sitting", "a cat sitting", clip)  # axolotl: 4 tokens, cat: 1
    assert m[2:6, 2].tolist() == [1, 1, 1, 1] and m[6, 3] == 1 and m[7, 4] == 1  # (the reference's k/n spread)
    assert m.sum(0)[3:].eq(1).all() and m[76, 74:].eq(1).all()
    m = replacement_mapper("a red ball.", "a blue ball", clip)  # [BOS a red ball . EOS] -> [BOS a blue ball EOS]
    assert m[5, 4] == 1 and m[4].sum() == 0 and m.sum(0).eq(1).all()  # '.' has no counterpart; EOS reads EOS
    m = replacement_mapper("a red ball", "a blue ball!!", clip)  # the target's '!!' joins its 'ball': 1/2 each
    assert m[3, 3] == 0.5 and m[3, 4] == 0.5 and m[4, 5] == 1 and m.sum(0)[5:].eq(1).all()


def test_a_word_swap_into_a_hyphenated_word_pairs_space_separated_pieces():
    """The reference's Spider-Man config is a word swap: 'man' -> 'Spider-Man' has one word more as the tokenizer
    splits it, but as many space-separated pieces, which pair up as the reference pairs them (the piece's three
    tokens at 1/3 each, hyphen included); the rest stays aligned."""
    clip = _shipped_clip_tokenizer()
    src, tgt = "a man is driving a motorbike in the forest", "a Spider-Man is driving a motorbike in the forest"
    m = replacement_mapper(src, tgt, clip)  # [BOS a man is ...] -> [BOS a spider - man is ...]
    assert m[2, 2:5].tolist() == pytest.approx([1 / 3] * 3) and m[2].sum() == pytest.approx(1)
    assert all(m[k, k + 2] == 1 for k in range(3, 11)) and m[:2, :2].equal(torch.eye(2))
    assert m.sum(1)[:11].eq(1).all()
    plan = build_edit_plan(clip, src, tgt, options=EditOptions(edit_mode="replace"))
    assert plan.mode == "replace" and torch.equal(plan.mapper[0], m)
    auto = build_edit_plan(clip, src, tgt, options=EditOptions(edit_mode="auto"))  # the reference's config too
    assert auto.mode == "replace" and torch.equal(auto.mapper[0], m)
    # pieces pair by position: a word added beside the hyphenated one would shift every word after it, so refine
    for other in ("a tall Spider-Man is driving a motorbike in the forest",
                  "Spider-Man is driving a red motorbike in the forest"):
        assert build_edit_plan(clip, src, other, options=EditOptions()).mode == "refine", other
    assert build_edit_plan(clip, "a cat on a sofa", "a cat-shaped lamp on sofa", options=EditOptions()).mode == "refine"
    assert build_edit_plan(clip, "a ball , on grass", "a big ball on grass", options=EditOptions()).mode == "refine"
    with pytest.raises(VP2PInputError, match="space-separated pieces differ"):
        replacement_mapper("a man is driving", "a tall Spider-Man is driving", clip)


def test_refinement_mapper_identical_prompts(tok):
    mapper, alphas = refinement_mapper("a red ball", "a red ball", tok)
    assert mapper.tolist() == list(range(77)) and alphas.eq(1).all()


def test_real_clip_tokenizer_mappers():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "vp2p_world" / "weights" / "tokenizer"
    if not (folder / "vocab.json").exists():
        pytest.skip("shipped CLIP tokenizer not present")
    from transformers import CLIPTokenizer

    clip = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)
    src, tgt = "a rabbit is jumping on the grass", "a origami rabbit is jumping on the grass"
    mapper, alphas = refinement_mapper(src, tgt, clip)
    assert alphas[:10].tolist() == [1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
    assert mapper[:3].tolist()[:2] == [0, 1] and mapper[3] == 2
    assert word_token_indices(tgt, "origami", clip) == [2]
    m = replacement_mapper("a red ball", "a blue ball", clip)
    assert torch.equal(m, torch.eye(77))


def test_plan_auto_mode_and_alpha(tok):
    plan = build_edit_plan(tok, "a red ball on grass", "a blue ball on grass", options=EditOptions(cross_replace=0.2))
    assert plan.mode == "replace"
    alpha = plan.cross_alpha(50)
    assert alpha.shape == (51, 1, 77)
    assert alpha[:10].eq(1).all() and alpha[10:].eq(0).all()  # int(0.2 * 51) = 10, as the reference
    plan = build_edit_plan(tok, "a ball", "a red ball")
    assert plan.mode == "refine"
    # as many words, but one added and another dropped: the kept words moved, so refine aligns them (replace paired
    # rabbit with origami and is with rabbit); swaps of any number of words in place stay replace
    for src, tgt, mode in [("a rabbit is jumping on the grass", "a origami rabbit jumping on the grass", "refine"),
                           ("a cat on the grass", "a big cat on grass", "refine"),
                           ("a red ball on green grass", "a blue cube on green grass", "replace"),
                           ("a red ball on grass", "A Blue ball on grass", "replace")]:
        assert build_edit_plan(tok, src, tgt).mode == mode, (src, tgt)


def test_plan_per_word_cross_replace(tok):
    plan = build_edit_plan(tok, "a red ball", "a blue ball", options=EditOptions(cross_replace=0.8),
                           cross_replace_words={"blue": 0.4})
    alpha = plan.cross_alpha(50)
    blue = word_token_indices("a blue ball", "blue", tok)[0]
    assert alpha[:20, 0, blue].eq(1).all() and alpha[20:, 0, blue].eq(0).all()
    assert alpha[:40, 0, 1].eq(1).all() and alpha[40:, 0, 1].eq(0).all()


def test_plan_reweight_and_blend(tok):
    plan = build_edit_plan(tok, "a rabbit jumping", "a origami rabbit jumping",
                           options=EditOptions(reweight_words="origami", reweight_values="2", blend_words="rabbit"))
    assert plan.mode == "refine"
    assert plan.equalizer[0, 2] == 2 and plan.equalizer[0, 1] == 1
    assert plan.blend.source_tokens == [2] and plan.blend.target_tokens == [[3]]


def test_plan_errors_name_the_input(tok):
    with pytest.raises(VP2PInputError, match="same number of words"):
        build_edit_plan(tok, "a red ball", "a big blue ball", options=EditOptions(edit_mode="replace"))
    with pytest.raises(VP2PInputError, match=r"blend_words \(source prompt\).*'cat'"):
        build_edit_plan(tok, "a red ball", "a blue ball", options=EditOptions(blend_words="cat"))
    with pytest.raises(VP2PInputError, match=r"blend_target_words \(target prompt\).*'cube'"):
        build_edit_plan(tok, "a red ball", "a blue ball",
                        options=EditOptions(blend_words="ball", blend_target_words="cube"))
    with pytest.raises(VP2PInputError, match="reweight_words.*'shiny'"):
        build_edit_plan(tok, "a red ball", "a blue ball", options=EditOptions(reweight_words="shiny", reweight_values="2"))
    long_prompt = " ".join(["word"] * 80)
    with pytest.raises(VP2PInputError, match="over the 77"):
        build_edit_plan(tok, long_prompt, "a ball")
    with pytest.raises(VP2PInputError, match="edit_mode"):
        build_edit_plan(tok, "a ball", "a cube", options=EditOptions(edit_mode="swap"))
    with pytest.raises(VP2PInputError, match="cross_replace"):
        build_edit_plan(tok, "a ball", "a cube", options=EditOptions(cross_replace=1.5))
    with pytest.raises(VP2PInputError, match="target_prompts"):
        build_edit_plan(tok, "a ball", [])


def test_several_targets_take_the_blend_and_reweight_words_they_have(tok):
    """'cat dog' for the targets 'a cat ...' and 'a dog ...': each target its own word, as the reference's per-prompt
    word lists; a word in no target, or a target with none of the blend words, is refused by name; one target still
    needs every word."""
    source, targets = "a rabbit on grass", ["a cat on grass", "a dog on grass"]
    plan = build_edit_plan(tok, source, targets, options=EditOptions(
        blend_words="rabbit", blend_target_words="cat dog", reweight_words="cat dog", reweight_values="2 3"))
    assert plan.blend.target_tokens == [[2], [2]]
    assert plan.equalizer[0, 2] == 2 and plan.equalizer[1, 2] == 3 and plan.equalizer[:, 3:].eq(1).all()
    with pytest.raises(VP2PInputError, match="blend_target_words \\(target prompt\\): the word 'cow' is in no target"):
        build_edit_plan(tok, source, targets, options=EditOptions(blend_words="rabbit",
                                                                  blend_target_words="cat dog cow"))
    with pytest.raises(VP2PInputError, match="none of the words \\['cat'\\] is in the target prompt 'a dog on grass'"):
        build_edit_plan(tok, source, targets, options=EditOptions(blend_words="rabbit", blend_target_words="cat"))
    only_cat = build_edit_plan(tok, source, targets, options=EditOptions(reweight_words="cat", reweight_values="2"))
    assert only_cat.equalizer[0, 2] == 2 and only_cat.equalizer[1].eq(1).all()  # the dog's prompt left alone
    with pytest.raises(VP2PInputError, match="blend_target_words \\(target prompt\\): the word 'dog' is not in"):
        build_edit_plan(tok, source, targets[:1], options=EditOptions(blend_words="rabbit", blend_target_words="cat dog"))


def test_share_source_rows_copies_the_source_onto_the_targets_and_leaves_the_rest():
    """Self-replace's q/k: the source clip's rows onto the target clips' rows of the controlled clips, the
    unconditional rows past them as they were, the input untouched (one copy; contiguous targets by a slice)."""
    from vp2p_core.attention import share_source_rows

    x = torch.arange(2 * 7 * 3, dtype=torch.float32).view(14, 3)  # 3 controlled clips of 2 rows, then 8 others
    before = x.clone()
    out = share_source_rows(x, 3, 0, [1, 2], controlled_rows=6)
    assert torch.equal(x, before)
    assert torch.equal(out[2:4], x[0:2]) and torch.equal(out[4:6], x[0:2]) and torch.equal(out[:2], x[:2])
    assert torch.equal(out[6:], x[6:])
    picked = share_source_rows(x[:6], 3, 0, [2])  # a target list that is not 1..clips-1
    assert torch.equal(picked[4:6], x[0:2]) and torch.equal(picked[:4], x[:4])


def test_target_rows_take_the_source_maps_through_the_alignment(tok):
    """The controller's cross-attention edit of the target rows, worked out token by token against Prompt-to-Prompt's
    definitions (AttentionReplace / AttentionRefine / AttentionReweight, then alpha_words): a word swap into two
    tokens ('cat' -> 'big-dog') spreads the source word's map over both; a refine keeps the inserted word's own map
    and moves the others' from their aligned source tokens; reweighting scales only its word; a word's own injection
    window ends its source maps (there the target keeps its own, unweighted); past cross_replace nothing changes.
    One-token recolours, which every other edit test uses, cannot tell a wrong mapper from the identity."""
    from vp2p_core.control import AttentionController

    g = torch.Generator().manual_seed(3)
    source, target = "a cat on grass", "a big-dog on grass"
    plan = build_edit_plan(tok, source, target, options=EditOptions(cross_replace=0.5, reweight_words="grass",
                                                                    reweight_values="2"),
                           cross_replace_words={"on": (0.0, 0.2)})
    ctrl = AttentionController(plan, num_steps=10, num_frames=2, latent_hw=(4, 4), blend_layers=[])
    probs = torch.rand(2, 2, 2, 16, 77, generator=g).softmax(-1)  # [source, target], frames, heads, queries, tokens
    assert word_token_indices(target, "big-dog", tok) == [2, 3] and word_token_indices(source, "cat", tok) == [2]
    assert word_token_indices(target, "on", tok) == [4] and word_token_indices(target, "grass", tok) == [5]
    for step in (0, 3, 7):
        ctrl.cur_step = step
        out = ctrl.cross(probs.clone(), "x")
        assert torch.equal(out[0], probs[0])  # the source's row is never written
        if step >= 5:  # cross_replace 0.5: the first int(0.5 * 11) = 5 steps
            assert torch.equal(out[1], probs[1])
            continue
        for k, w in ((0, 0), (1, 1), (6, 5), (7, 6)):  # BOS, 'a', EOS and the padding after it
            torch.testing.assert_close(out[1][..., k], probs[0][..., w])
        for k in (2, 3):  # 'big' and 'dog': half of 'cat' each
            torch.testing.assert_close(out[1][..., k], 0.5 * probs[0][..., 2])
        torch.testing.assert_close(out[1][..., 5], 2 * probs[0][..., 4])  # 'grass', reweighted
        on = probs[0][..., 3] if step < 2 else probs[1][..., 4]  # its own window: the first int(0.2 * 11) = 2 steps
        torch.testing.assert_close(out[1][..., 4], on)

    source, target = "a cat on grass", "a fluffy cat on grass"
    plan = build_edit_plan(tok, source, target, options=EditOptions(edit_mode="refine", cross_replace=0.5))
    ctrl = AttentionController(plan, num_steps=10, num_frames=2, latent_hw=(4, 4), blend_layers=[])
    ctrl.cur_step = 2
    out = ctrl.cross(probs.clone(), "x")
    torch.testing.assert_close(out[1][..., 2], probs[1][..., 2])  # 'fluffy', new: its own map
    for k, w in {0: 0, 1: 1, 3: 2, 4: 3, 5: 4}.items():  # 'a', 'cat', 'on', 'grass' from their source tokens
        torch.testing.assert_close(out[1][..., k], probs[0][..., w])


def test_several_targets_say_where_one_resolution_covers_them_all(tok, caplog):
    """edit_mode auto and the blend's auto settings are resolved once for every target prompt: a word swap beside a
    refinement is refined, a recolour beside a shape swap gets the shape swap's grown union. Each is said, naming
    the targets that edit otherwise than alone; one target, or targets that agree, say nothing."""
    import logging

    source = "a red ball on grass"
    with caplog.at_level(logging.WARNING, logger="vp2p_core.control"):
        plan = build_edit_plan(tok, source, ["a blue ball on grass", "a red paper ball on grass"])
        assert plan.mode == "refine"
        assert "refined too" in caplog.text and "('a blue ball on grass')" in caplog.text
        caplog.clear()
        plan = build_edit_plan(tok, source, ["a blue ball on grass", "a red cube on grass"],
                               options=EditOptions(blend_words="ball", blend_target_words="ball cube"))
        assert (plan.blend.region, plan.blend.source_only) == ("grown", False)
        assert "blend_region and blend_from auto: resolved once" in caplog.text
        assert "'a blue ball on grass' keep the source's" in caplog.text
        caplog.clear()
        build_edit_plan(tok, source, ["a blue ball on grass", "a green ball on grass"],
                        options=EditOptions(blend_words="ball"))
        build_edit_plan(tok, source, "a red cube on grass",
                        options=EditOptions(blend_words="ball", blend_target_words="cube"))
        # the source's own words for every target (no blend_target_words), one target with only some of them: the
        # outline region for all, as alone, and nothing to say
        plan = build_edit_plan(tok, source, ["a blue ball on grass", "a blue ball on sand"],
                               options=EditOptions(blend_words="ball grass"))
        assert plan.blend.region == "outline"
        build_edit_plan(tok, source, ["a blue ball on grass", "a red cube on grass"],
                        options=EditOptions(blend_words="ball", blend_target_words="ball cube", blend_region="grown",
                                            blend_from="both"))
    assert caplog.text == ""


def test_attention_grids_are_the_downsamplers_rounding_up():
    """A 16:9 clip at 512x288 in SD has a 64x36 latent; the UNet's stride-2 convolutions (padding 1) make grids of
    32x18, 16x9 and 8x5, so a layer's token count places its maps; a count no grid has is an error."""
    from vp2p_core.control import token_grid

    assert [token_grid((36, 64), n) for n in (36 * 64, 18 * 32, 9 * 16, 5 * 8)] == [(36, 64), (18, 32), (9, 16),
                                                                                          (5, 8)]
    assert token_grid((64, 64), 16 * 16) == (16, 16) and token_grid((15, 16), 64) == (8, 8)
    with pytest.raises(RuntimeError, match="cannot place 100 attention tokens on a 36x64 latent's grids"):
        token_grid((36, 64), 100)
