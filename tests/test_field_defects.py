"""Defects found when the extension ran on a real ComfyUI: each test failed before its fix."""
from __future__ import annotations

import os

import pytest
import torch

from vp2p_core import VP2PInputError
from vp2p_core.files import atomic_save, load_checked

torch.set_num_threads(1)


# --- our files: kinds, corrupt and foreign files ----------------------------------------------------------

def _our_file(path, kind: str):
    atomic_save({"x": torch.zeros(4)}, path, {"vp2p_kind": kind})
    return path


def test_saved_files_get_the_umasks_mode(tmp_path):
    """Written through a temporary file (mkstemp makes it 0600), a saved delta or inversion still gets the mode a
    plain file would: readable by the other users of a shared ComfyUI."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = _our_file(tmp_path / "d.safetensors", "delta")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644



def test_a_file_system_without_modes_still_saves(tmp_path, monkeypatch):
    """FAT refuses a chmod to modes it cannot hold: the file is saved with the mode it has."""
    import os

    def refuse(*args, **kwargs):
        raise PermissionError("Operation not permitted")

    monkeypatch.setattr(os, "chmod", refuse)
    path = _our_file(tmp_path / "d.safetensors", "delta")
    assert load_checked(path, "delta")[0]["x"].shape == (4,) and not list(tmp_path.glob("*.tmp"))


def test_wrong_kind_message_uses_the_right_article(tmp_path):
    delta = _our_file(tmp_path / "d.safetensors", "delta")
    with pytest.raises(VP2PInputError) as e:
        load_checked(delta, "inversion")
    msg = str(e.value)
    assert "is a delta file, not an inversion" in msg and "a inversion" not in msg
    inversion = _our_file(tmp_path / "i.safetensors", "inversion")
    with pytest.raises(VP2PInputError, match="is an inversion file, not a delta"):
        load_checked(inversion, "delta")


def _truncated(path):
    _our_file(path, "delta")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _random_bytes(path):
    path.write_bytes(os.urandom(300))


def _foreign(path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})


@pytest.mark.parametrize("make", [_truncated, _random_bytes, _foreign], ids=["truncated", "random", "foreign"])
@pytest.mark.parametrize("kind, saver", [("delta", "SaveVP2PDelta"), ("inversion", "SaveVP2PInversion")])
def test_corrupt_or_foreign_file_names_input_file_and_expectation(tmp_path, make, kind, saver):
    path = tmp_path / "clip.safetensors"
    make(path)
    with pytest.raises(VP2PInputError) as e:
        load_checked(path, kind)
    msg = str(e.value)
    assert msg.startswith("filename: ") and str(path) in msg, msg
    assert f"expected {'an' if kind == 'inversion' else 'a'} {kind} file written by {saver}" in msg, msg


# --- words next to punctuation: blend, reweight, swap --------------------------------------------------------

@pytest.fixture(scope="module")
def clip_tokenizer():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "vp2p_world" / "weights" / "tokenizer"
    if not (folder / "vocab.json").exists():
        pytest.skip("shipped CLIP tokenizer not present")
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def test_words_next_to_punctuation_are_found(clip_tokenizer):
    from vp2p_core.text import parse_words, word_token_indices, words_token_indices

    tok = clip_tokenizer
    prompt = "a rabbit, jumping on the grass"  # tokens: a 1, rabbit 2, ',' 3, jumping 4, on 5, the 6, grass 7
    assert words_token_indices(prompt, parse_words("rabbit"), tok, "blend_words") == [2]  # blend
    assert words_token_indices(prompt, ["Rabbit,"], tok, "reweight_words") == [2]  # reweight
    assert word_token_indices(prompt, "jumping", tok) == [4]
    # whitespace other than one space (ComfyUI's multiline prompts) does not shift the words
    assert word_token_indices("a rabbit,\njumping  on the grass", "grass", tok) == [7]
    assert word_token_indices("a big-red ball", "red", tok) == [4]
    assert word_token_indices("a big-red ball", "big-red", tok) == [2, 4]
    assert parse_words("rabbit , - cat") == ["rabbit", "cat"]


def test_toy_tokenizer_word_with_punctuation():
    from vp2p_world.tiny import ToyTokenizer
    from vp2p_core.text import word_token_indices

    assert word_token_indices("a rabbit, jumping", "rabbit", ToyTokenizer()) == [2]


def test_word_swap_next_to_punctuation(clip_tokenizer):
    from vp2p_core import build_edit_plan
    from vp2p_core.seq_aligner import replacement_mapper

    tok = clip_tokenizer
    # no space after the comma: the same six words as the target
    m = replacement_mapper("a rabbit,jumping on the grass", "a cat, jumping on the grass", tok)
    assert torch.equal(m, torch.eye(77))
    plan = build_edit_plan(tok, "a rabbit,jumping on the grass", "a cat, jumping on the grass")
    assert plan.mode == "replace"
    # the comma the target drops maps nowhere; the words after it stay paired
    m = replacement_mapper("a red ball, on grass", "a blue ball on grass", tok)
    assert m[3, 3] == 1 and m[4].sum() == 0 and m[5, 4] == 1 and m[6, 5] == 1


# --- cache_dir ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["../out", "/abs/cache", "C:\\cache", "cache/../../x", "~/cache"])
def test_bad_cache_dir_names_the_input_not_the_internal_path(bad):
    from nodes import files as node_files

    with pytest.raises(VP2PInputError) as e:
        node_files.cache_path(bad, "delta", "0123abcd")
    msg = str(e.value)
    assert msg.startswith(f"cache_dir: {bad!r} ") and "expected a folder name under models/vp2p" in msg, msg
    assert "delta-" not in msg and ".safetensors" not in msg, msg


def test_good_cache_dir(tmp_path):
    from nodes import files as node_files

    node_files.set_roots(output=tmp_path / "output", models=tmp_path / "models")
    try:
        path = node_files.cache_path(" vp2p_cache/ ", "delta", "0123abcd")
    finally:
        node_files.set_roots()
    assert path == tmp_path / "models" / "vp2p_cache" / "delta-0123abcd.safetensors"


# --- one prompt-length check for every prompt -----------------------------------------------------------

class ChunkingClip:
    """ComfyUI's CLIP for a long prompt: one 77-token window per 75 tokens, concatenated."""

    def __init__(self):
        from types import SimpleNamespace

        from vp2p_world.tiny import ToyTokenizer

        self.tok = ToyTokenizer()
        self.tokenizer = SimpleNamespace(clip="clip_l", clip_l=SimpleNamespace(tokenizer=self.tok))

    def tokenize(self, text):
        return text

    def encode_from_tokens(self, text):
        windows = -(-(len(self.tok.encode(text)) - 2) // 75)
        return torch.zeros(1, 77 * max(1, windows), 32)


def test_long_prompt_message_has_the_count_for_every_prompt():
    from nodes.text import encode_text
    from vp2p_core.text import check_prompt_length

    clip = ChunkingClip()
    long_prompt = " ".join(["word"] * 79)  # 81 tokens with start and end
    with pytest.raises(VP2PInputError) as tune:  # OneShotTune / NullTextVideoInvert encode the prompt so
        encode_text(clip, long_prompt, "source_prompt")
    with pytest.raises(VP2PInputError) as edit:  # the editor checks it with the tokenizer
        check_prompt_length(clip.tok, long_prompt, "source_prompt")
    assert str(tune.value) == str(edit.value)
    assert "81 tokens" in str(tune.value) and "over the 77" in str(tune.value)
    assert encode_text(clip, "a ball", "source_prompt").shape == (1, 77, 32)


# --- one progress bar for the inversion -----------------------------------------------------------------

def _invert(model, latents, emb, host, steps: int):
    """Null-text inversion with ``steps`` DDIM steps, through invert's keywords or its options object."""
    import inspect

    from vp2p_core import invert

    if "options" in inspect.signature(invert).parameters:
        from vp2p_core.options import InversionOptions

        return invert(model, latents, emb[:1], emb[1:2], "a red ball",
                      options=InversionOptions(steps=steps, inner_steps=1), host=host)
    return invert(model, latents, emb[:1], emb[1:2], "a red ball", num_steps=steps, inner_steps=1, host=host)


def test_inversion_fills_one_progress_bar_once():
    from vp2p_world.tiny import ToyTokenizer, tiny_unet, toy_embed
    from vp2p_core import Host, VideoModel

    reports = []
    host = Host(progress=lambda step, total, preview: reports.append((step, total)))
    emb = toy_embed(ToyTokenizer(), ["a red ball", ""])
    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    _invert(VideoModel.from_unet(tiny_unet()), latents, emb, host, steps=3)
    assert reports == [(i, 6) for i in range(1, 7)]  # 3 DDIM steps, then 3 null-text steps, on one bar


# --- the editor's source prompt must be the inversion's -----------------------------------------------------

def _edit_inputs(inverted_prompt: str, source_prompt: str):
    from vp2p_core import Inversion, VideoModel, build_edit_plan
    from vp2p_world.tiny import ToyTokenizer, tiny_unet, toy_embed

    tok = ToyTokenizer()
    model = VideoModel.from_unet(tiny_unet())
    emb = toy_embed(tok, [source_prompt, "a blue ball on grass", ""])
    inversion = Inversion(x_T=torch.zeros(2, 4, 16, 16), source_embedding=emb[:1], timesteps=torch.arange(3),
                          mode="fast", guidance=7.5, prompt=inverted_prompt, model_fingerprint=model.fingerprint,
                          schedule=model.schedule)
    plan = build_edit_plan(tok, source_prompt, "a blue ball on grass")
    plan.source_embedding, plan.target_embeddings, plan.empty_embedding = emb[:1], emb[1:2], emb[2:3]
    return model, inversion, plan


def test_source_prompt_other_than_the_inversions_is_refused():
    from vp2p_core.sampling import check_edit_inputs

    with pytest.raises(VP2PInputError) as e:
        check_edit_inputs(*_edit_inputs("a red ball on grass", "a red cube on grass"))
    msg = str(e.value)
    assert msg.startswith("source_prompt: ") and "'a red cube on grass'" in msg and "'a red ball on grass'" in msg
    check_edit_inputs(*_edit_inputs("a red ball on grass", " a red  ball\non grass "))  # whitespace aside: the same


def test_damaged_metadata_is_refused_by_name_not_a_crash(tmp_path):
    """Metadata a reader cannot parse (bad JSON, a mode or schedule no sampler knows) is refused as a damaged file,
    which the nodes' cache makes again, instead of a JSONDecodeError, or a 'fast' edit of an unknown mode."""
    from vp2p_core import Delta, Inversion
    from vp2p_core.schedule import DDIMConfig

    x = {"x_T": torch.zeros(2, 4, 8, 8), "source_embedding": torch.zeros(1, 77, 8), "timesteps": torch.arange(3)}
    good = {"vp2p_kind": "inversion", "mode": "fast", "guidance": "7.5", "prompt": "a", "model_fingerprint": "m",
            "schedule": '{"prediction_type": "epsilon"}'}
    atomic_save(x, tmp_path / "ok.safetensors", good)
    assert Inversion.load(tmp_path / "ok.safetensors").schedule == DDIMConfig()
    for name, bad, words in (("json", {"schedule": "{oops"}, "metadata that cannot be read"),
                             ("mode", {"mode": "null_text_x"}, "inversion mode 'null_text_x'"),
                             ("pred", {"schedule": '{"prediction_type": "sample"}'}, "prediction_type"),
                             ("guidance", {"guidance": "high"}, "metadata that cannot be read")):
        atomic_save(x, tmp_path / f"{name}.safetensors", {**good, **bad})
        with pytest.raises(VP2PInputError, match=f"inversion_file: .*{name}.safetensors.*{words}"):
            Inversion.load(tmp_path / f"{name}.safetensors", what="inversion_file")
    delta = {"vp2p_kind": "delta", "base_fingerprint": "b", "num_frames": "2", "prompt": "a", "steps": "1"}
    atomic_save({"w": torch.zeros(2)}, tmp_path / "d.safetensors", {**delta, "losses": "[0.5,"})
    with pytest.raises(VP2PInputError, match="delta_file: .*metadata that cannot be read"):
        Delta.load(tmp_path / "d.safetensors", what="delta_file")
