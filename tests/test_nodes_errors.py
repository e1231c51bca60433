"""Bad input gets the node's clear error (VP2PInputError, whose message ComfyUI shows as it is)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from comfy_nodes import run
from nodes import files as node_files
from nodes.nodes_decode import DecodeFrames
from nodes.nodes_files import LoadVP2PDelta, LoadVP2PInversion, SaveVP2PDelta, SaveVP2PInversion
from nodes.nodes_invert import NullTextVideoInvert
from nodes.nodes_light import NormaliseLight
from nodes.nodes_tune import OneShotTune
from nodes.types import VP2PLight
from test_nodes import SRC, TGT, FakeClip, edit, invert, make_latent, make_model, sample, tune
from vp2p_core import Delta, VP2PInputError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("vp2p_err")
    node_files.set_roots(output=base / "output", models=base / "models")
    clip = FakeClip()
    model = make_model()
    latent = make_latent(frames=3)
    tuned, _ = tune(model, latent, clip, steps=1, seed=1, cache_dir="")
    inv = invert(tuned, latent, clip, steps=2, mode="fast", inner_steps=1, cache_dir="")
    run(SaveVP2PDelta, vp2p_model=tuned, filename="clip.delta")
    run(SaveVP2PInversion, inversion=inv, filename="clip.inversion")
    yield dict(clip=clip, model=model, tuned=tuned, latent=latent, inv=inv, base=base)
    node_files.set_roots()


# --- prompts ---------------------------------------------------------------------------------------------

def test_word_swap_needs_equal_word_counts(setup):
    with pytest.raises(VP2PInputError, match=r"^target_prompts: a word swap \(replace\) needs the same number of"):
        edit(setup["clip"], SRC, "a big blue ball on grass", edit_mode="replace")


def test_blend_word_absent(setup):
    with pytest.raises(VP2PInputError, match="'cube'"):
        edit(setup["clip"], SRC, TGT, blend_words="cube")
    with pytest.raises(VP2PInputError, match=r"^blend_target_words \(target prompt\): the word 'green' is not in"):
        edit(setup["clip"], SRC, TGT, blend_words="red", blend_target_words="green")


def test_reweight_word_absent_and_bad_values(setup):
    with pytest.raises(VP2PInputError, match="reweight_words"):
        edit(setup["clip"], SRC, TGT, reweight_words="origami", reweight_values="2")
    with pytest.raises(VP2PInputError, match="reweight_values"):
        edit(setup["clip"], SRC, TGT, reweight_words="blue", reweight_values="two")


def test_empty_targets(setup):
    with pytest.raises(VP2PInputError, match="^target_prompts: expected at least one target prompt"):
        edit(setup["clip"], SRC, " \n \n")


def test_clip_without_tokenizer():
    class NoTok:
        tokenizer = object()

    with pytest.raises(VP2PInputError, match="^clip: expected the CLIP of an SD 1.x/2.x checkpoint"):
        edit(NoTok(), SRC, TGT)


def test_prompt_syntax_that_moves_words_refused():
    """ComfyUI's tokenizer output ({encoder: [[(id, weight), ...]]}, BOS to EOS, then padding) against the plain
    ids the word positions come from. The real SD 1.x tokenizer gives weights other than 1 for '(red:1.3)' and
    '(on grass)', an escaped '\\(' becomes one token where the plain tokenizer reads two, and an embedding is a
    tensor in place of ids (checked by hand against ComfyUI 0.3.64's SD1Tokenizer)."""
    from nodes.text import check_plain_tokens

    plain = [49406, 320, 736, 1952, 525, 49407]
    pad = [(49407, 1.0)] * 4
    check_plain_tokens({"l": [[(i, 1.0) for i in plain] + pad]}, plain, "source_prompt")
    check_plain_tokens({"l": [[(i, 1.0, 0) for i in plain] + pad]}, plain, "source_prompt")  # with word ids
    check_plain_tokens({"l": "a red ball"}, plain, "source_prompt")  # a layout it does not know: not checked
    weighted = [(i, 1.3 if i == 736 else 1.0) for i in plain] + pad
    shifted = [(i, 1.0) for i in plain[:2] + [7, 8] + plain[2:]] + pad
    embedded = [(i, 1.0) for i in plain[:2]] + [(torch.zeros(768), 1.0)] + [(i, 1.0) for i in plain[3:]] + pad
    for tokens in (weighted, shifted, embedded):
        with pytest.raises(VP2PInputError, match="^target_prompts: ComfyUI's tokenizer reads this prompt with"):
            check_plain_tokens({"l": [tokens]}, plain, "target_prompts")
    # through the nodes: the editor and the tuning node refuse such a prompt (a fake CLIP with ComfyUI's layout)
    with pytest.raises(VP2PInputError, match="ComfyUI's tokenizer reads this prompt with"):
        edit(FakeClip(), SRC, "a (blue:1.3) ball on grass")
    with pytest.raises(VP2PInputError, match="^source_prompt: ComfyUI's tokenizer reads this prompt with"):
        run(OneShotTune, vp2p_model=make_model(), latent=make_latent(), clip=FakeClip(),
            source_prompt="a (red) ball on grass", steps=1, cache_dir="", gradient_checkpointing=False)


# --- latents and frame counts -----------------------------------------------------------------------------

def test_latent_shape_errors(setup):
    clip, model = setup["clip"], setup["model"]
    bad = [({"samples": torch.zeros(1, 4, 3, 16, 16)}, "frames, channels"),
           ({"samples": torch.zeros(3, 3, 16, 16)}, "channels"),
           (torch.zeros(3, 4, 16, 16), "LATENT"),
           ({"samples": torch.zeros(0, 4, 16, 16)}, "^latent: expected at least one frame"),
           ({"samples": torch.zeros(3, 4, 0, 16)}, "^latent: expected at least one frame")]
    for latent, msg in bad:
        with pytest.raises(VP2PInputError, match=msg):
            tune(model, latent, clip, steps=1, seed=1, cache_dir="")


def test_inversion_frame_count_must_match_tuning(setup):
    with pytest.raises(VP2PInputError, match="latent: tuned on 3 frames, but the clip has 4 frames"):
        invert(setup["tuned"], make_latent(frames=4), setup["clip"], steps=2, mode="fast", inner_steps=1, cache_dir="")


def test_inversion_lr_scale_must_be_positive(setup):
    with pytest.raises(VP2PInputError, match="lr_scale"):
        invert(setup["tuned"], make_latent(), setup["clip"], steps=2, inner_steps=1, cache_dir="", lr_scale=0.0)


def test_sampler_latent_must_match_inversion(setup):
    e = edit(setup["clip"])
    with pytest.raises(VP2PInputError, match="3 frames, but the latent has 4 frames"):
        sample(setup["tuned"], setup["inv"], e, latent=make_latent(frames=4))
    with pytest.raises(VP2PInputError, match="frame size"):
        sample(setup["tuned"], setup["inv"], e, latent=make_latent(size=8))


def test_sampler_refuses_inversion_of_another_model(setup):
    e = edit(setup["clip"])
    with pytest.raises(VP2PInputError, match="invert again"):
        sample(setup["model"], setup["inv"], e)  # untuned model
    with pytest.raises(VP2PInputError, match="AttentionEditController"):
        sample(setup["tuned"], setup["inv"], "not an edit")


def test_decode_errors():
    with pytest.raises(VP2PInputError, match="LATENT"):
        run(DecodeFrames, vae=object(), latent=torch.zeros(1))
    with pytest.raises(VP2PInputError, match="frames, channels"):
        run(DecodeFrames, vae=object(), latent={"samples": torch.zeros(1, 4, 2, 8, 8)})
    with pytest.raises(VP2PInputError, match="light: expected the light output of NormaliseLight"):
        run(DecodeFrames, vae=object(), latent={"samples": torch.zeros(2, 4, 8, 8)}, light=torch.ones(2, 3))
    light = VP2PLight(gains=torch.ones(3, 3))
    with pytest.raises(VP2PInputError, match="latent: expected the light's 3 frames or a whole multiple"):
        run(DecodeFrames, vae=object(), latent={"samples": torch.zeros(4, 4, 8, 8)}, light=light)
    sd3_vae = SimpleNamespace(latent_channels=16, decode=lambda s: pytest.fail("decoded latents it cannot take"))
    with pytest.raises(VP2PInputError, match="latent: 4 latent channels, but the vae decodes 16"):
        run(DecodeFrames, vae=sd3_vae, latent={"samples": torch.zeros(2, 4, 8, 8)})
    with pytest.raises(VP2PInputError, match="images: expected RGB frames"):
        run(NormaliseLight, images=torch.zeros(2, 8, 8))
    with pytest.raises(VP2PInputError, match="images: expected RGB frames"):
        run(NormaliseLight, images=torch.zeros(0, 8, 8, 3))
    with pytest.raises(VP2PInputError, match="images: expected finite values in 0..1, got NaN"):
        run(NormaliseLight, images=torch.full((2, 8, 8, 3), float("nan")))


# --- files ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../escape.delta", "vp2p/../../x", "/etc/passwd", "C:\\x.delta", "~/x",
                                  "a//b", "./a", "", "  ", "a\x00b"])
def test_bad_file_names_refused(setup, name):
    """Refused for the name itself (not as a file that happens not to exist), by the input's name."""
    refusal = r"filename: .*(got '\s*'|is an absolute path|contains '\.\.', '\.' or empty parts|control characters)"
    with pytest.raises(VP2PInputError, match=refusal):
        run(SaveVP2PDelta, vp2p_model=setup["tuned"], filename=name)
    with pytest.raises(VP2PInputError, match=refusal):
        run(LoadVP2PDelta, vp2p_model=setup["model"], filename=name)


def test_save_names_a_blocked_filename(setup):
    """A Save node's name under a file ('vp2p/clip.delta' where output/vp2p is a file) or naming a folder is
    refused by the input's name (pathlib's FileExistsError / IsADirectoryError before), and nothing is written."""
    output = setup["base"] / "output"
    (output / "taken").write_text("a file")
    (output / "folder.safetensors").mkdir()
    before = sorted(p.name for p in output.rglob("*"))
    for name, message in [("taken/clip.delta", "is a file; give a path in a folder"),
                          ("folder", "is a folder; give a file name")]:
        with pytest.raises(VP2PInputError, match=f"^filename: .*{message}"):
            run(SaveVP2PDelta, vp2p_model=setup["tuned"], filename=name)
    assert sorted(p.name for p in output.rglob("*")) == before


def test_save_untuned_model_refused(setup):
    with pytest.raises(VP2PInputError, match="not tuned"):
        run(SaveVP2PDelta, vp2p_model=setup["model"], filename="x.delta")


def test_missing_file(setup):
    with pytest.raises(VP2PInputError, match="no file 'nothing.safetensors'"):
        run(LoadVP2PDelta, vp2p_model=setup["model"], filename="nothing")
    assert LoadVP2PDelta.fingerprint_inputs(filename="nothing").startswith("missing:")


def test_delta_for_another_model_refused(setup):
    other = make_model(seed=5)
    with pytest.raises(VP2PInputError, match="another checkpoint"):
        run(LoadVP2PDelta, vp2p_model=other, filename="clip.delta")


def test_delta_for_another_clip_length_refused(setup):
    with pytest.raises(VP2PInputError, match="tuned on 3 frames, but the clip has 5 frames"):
        run(LoadVP2PDelta, vp2p_model=setup["model"], filename="clip.delta", latent=make_latent(frames=5))


def test_a_model_tuned_on_one_clip_refuses_another_of_the_same_size(setup, caplog):
    """The frame count alone let a model tuned on one clip invert another; the delta's thumbnail of its clip now
    refuses it, in NullTextVideoInvert and in LoadVP2PDelta given the clip, by the input's name."""
    with pytest.raises(VP2PInputError, match="^latent: tuned on another clip: frame"):
        invert(setup["tuned"], make_latent(seed=4), setup["clip"], steps=2, mode="fast", cache_dir="")
    with pytest.raises(VP2PInputError, match="clip.delta.*: tuned on another clip"):
        run(LoadVP2PDelta, vp2p_model=setup["model"], filename="clip.delta", latent=make_latent(seed=4))
    assert run(LoadVP2PDelta, vp2p_model=setup["model"], filename="clip.delta",
               latent=setup["latent"])[0].delta.source_thumbnail is not None
    with caplog.at_level("WARNING", logger="nodes.nodes_invert"):  # another prompt than the tuning's: said
        run(NullTextVideoInvert, vp2p_model=setup["tuned"], latent=setup["latent"], clip=setup["clip"], steps=2,
            mode="fast", cache_dir="", source_prompt="a red cube on grass")
    assert "is not the prompt the model was tuned with" in caplog.text


def test_inversion_for_another_model_refused(setup):
    with pytest.raises(VP2PInputError, match="made with the model"):
        run(LoadVP2PInversion, vp2p_model=setup["model"], filename="clip.inversion")  # untuned: another fingerprint


def test_inversion_for_another_clip_refused(setup):
    with pytest.raises(VP2PInputError, match="3 frames, but the latent has 2 frames"):
        run(LoadVP2PInversion, vp2p_model=setup["tuned"], filename="clip.inversion", latent=make_latent(frames=2))
    with pytest.raises(VP2PInputError, match="clip.inversion.*: made from another clip"):  # same size
        run(LoadVP2PInversion, vp2p_model=setup["tuned"], filename="clip.inversion", latent=make_latent(seed=4))
    with pytest.raises(VP2PInputError, match="^inversion: made from another clip"):
        sample(setup["tuned"], setup["inv"], edit(setup["clip"]), latent=make_latent(seed=4))
    assert run(LoadVP2PInversion, vp2p_model=setup["tuned"], filename="clip.inversion",
               latent=setup["latent"])[0].source_thumbnail is not None


def test_wrong_kind_of_file_refused(setup):
    with pytest.raises(VP2PInputError, match="not a delta"):
        run(LoadVP2PDelta, vp2p_model=setup["model"], filename="clip.inversion")


def test_cache_and_roots():
    assert node_files.cache_path("", "delta", "k") is None
    with pytest.raises(VP2PInputError, match=r"^cache_dir: '\.\./out' contains '\.\.'"):
        node_files.cache_path("../out", "delta", "k")
    h1 = node_files.tensor_hash(torch.zeros(2, 2))
    assert h1 != node_files.tensor_hash(torch.zeros(4)) and h1 != node_files.tensor_hash(torch.zeros(2, 2).double())


def test_clip_of_another_width_refused(setup):
    wide = FakeClip(dim=48)
    with pytest.raises(VP2PInputError, match="width 48, but the model reads 32"):
        tune(setup["model"], setup["latent"], wide, steps=1, seed=1, cache_dir="")
    e = edit(wide)
    with pytest.raises(VP2PInputError, match="width 48"):
        sample(setup["tuned"], setup["inv"], e)


def test_tuning_needs_fp32_weights():
    from vp2p_world.tiny import tiny_unet
    from nodes.types import vp2p_model_from_unet

    half = vp2p_model_from_unet(tiny_unet().to(torch.bfloat16))
    with pytest.raises(VP2PInputError, match="weight_dtype fp32"):
        tune(half, make_latent(), FakeClip(), steps=1, seed=1, cache_dir="")


def test_null_text_inversion_needs_fp32_weights_and_fast_inversion_keys_the_dtype(setup):
    """Adam on a half-precision null embedding turns it to NaN (fp16 on CPU: every embedding NaN), so null-text
    inversion refuses half weights by name; a fast inversion in fp16 is cached apart from the fp32 one of the same
    (fp16-exact) weights."""
    from vp2p_world.tiny import tiny_unet
    from nodes.types import vp2p_model_from_unet

    half = vp2p_model_from_unet(tiny_unet().to(torch.float16))
    with pytest.raises(VP2PInputError, match="^vp2p_model: its weights are float16; null-text inversion needs"):
        invert(half, make_latent(), FakeClip(), steps=2, inner_steps=1, cache_dir="")
    exact = vp2p_model_from_unet(tiny_unet().to(torch.float16).float())
    assert exact.fingerprint == half.fingerprint
    full = invert(exact, make_latent(), FakeClip(), steps=2, mode="fast", cache_dir="dtype_cache")
    fp16 = invert(half, make_latent(), FakeClip(), steps=2, mode="fast", cache_dir="dtype_cache")
    assert full.x_T.dtype == torch.float32 and not torch.equal(full.x_T, fp16.x_T)


def test_empty_source_prompt_refused(setup):
    with pytest.raises(VP2PInputError, match="^source_prompt: expected"):
        run(OneShotTune, vp2p_model=setup["model"], latent=setup["latent"], clip=setup["clip"], source_prompt=" ",
            steps=1, cache_dir="", gradient_checkpointing=False)
    with pytest.raises(VP2PInputError, match="^source_prompt: expected"):
        run(NullTextVideoInvert, vp2p_model=setup["tuned"], latent=setup["latent"], clip=setup["clip"],
            source_prompt="", steps=2, cache_dir="")


def test_corrupt_cache_file_is_computed_again_with_a_warning_naming_cache_dir(setup, caplog):
    """A cache file that no longer reads (a disk error, an interrupted copy) is reported as the cache's, not as a
    file name the user typed, and computed again in its place: an error would stop every run until someone found
    and deleted the file."""
    latent = make_latent(frames=3, seed=11)
    first, _ = tune(setup["model"], latent, setup["clip"], steps=1, seed=1, cache_dir="corrupt_cache")
    folder = setup["base"] / "models" / "corrupt_cache"
    cached = [q for q in folder.iterdir() if not q.name.endswith(node_files.NEAR_SUFFIX)]
    assert len(cached) == 1
    cached[0].write_bytes(b"\x00" * 64)
    with caplog.at_level("WARNING", logger="nodes.files"):
        again, log_text = tune(setup["model"], latent, setup["clip"], steps=1, seed=1, cache_dir="corrupt_cache")
    assert "does not load (cache_dir: " in caplog.text and "computing it again" in caplog.text
    assert not log_text.startswith("loaded") and again.delta.fingerprint == first.delta.fingerprint
    assert sorted(folder.iterdir()) == sorted(folder.glob("delta-*"))  # replaced, nothing beside it but its latents
    assert len(list(folder.iterdir())) == 2
    assert Delta.load(cached[0]).fingerprint == first.delta.fingerprint
