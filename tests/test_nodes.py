"""Node layer on ComfyUI's node API alone: definitions are well formed, and every node runs on tiny models.

Fake CLIP / VAE objects stand in for ComfyUI's; the VP2P_MODEL is built from a tiny diffusers UNet
(InflateUNet's ComfyUI conversion is the one step bypassed, and is covered by tests/integration).
Node functions run under torch.inference_mode(), as ComfyUI runs them.
"""
from __future__ import annotations

import ast
import importlib.util
import asyncio
import inspect
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from comfy_nodes import NODE_MAP, latest, run
from nodes import files as node_files
from nodes.nodes_composite import BlendMask
from nodes.nodes_decode import AttentionMaps, DecodeFrames
from nodes.nodes_edit import AttentionEditController
from nodes.nodes_files import LoadVP2PDelta, LoadVP2PInversion, SaveVP2PDelta, SaveVP2PInversion
from nodes.nodes_inflate import InflateUNet
from nodes.nodes_invert import NullTextVideoInvert
from nodes.nodes_light import NormaliseLight
from nodes.nodes_sample import VideoP2PSampler
from nodes.nodes_tune import OneShotTune
from nodes.types import VP2PEdit, VP2PMaps, VP2PModel, vp2p_model_from_unet
from vp2p_core import (SD_LATENT_SCALE, CompositeOptions, Delta, EditOptions, Inversion, VP2PInputError,
                       composite_frames, composite_mask)
from vp2p_core.composite import image_mask
from vp2p_world.tiny import ToyTokenizer, tiny_unet, toy_embed

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
FRAMES = 3
SRC = "a red ball on grass"
TGT = "a blue ball on grass"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


# ---------------------------------------------------------------------------------------------------------
# fakes for ComfyUI's CLIP and VAE

class FakeClip:
    """ComfyUI's CLIP surface: tokenize / encode_from_tokens, and tokenizer.clip_l.tokenizer."""

    def __init__(self, dim: int = 32):
        self.tok = ToyTokenizer()
        self.dim = dim
        self.tokenizer = SimpleNamespace(clip="clip_l", clip_l=SimpleNamespace(tokenizer=self.tok))
        self.calls = 0

    def tokenize(self, text):
        """ComfyUI's layout, {encoder: [[(id, weight), ...]]}: plain ids padded to 77, weighted 1.1 where the text
        has a parenthesis (ComfyUI's emphasis, crudely)."""
        weight = 1.1 if "(" in text else 1.0
        ids = self.tok.encode(text)
        tokens = _Tokens(l=[[(i, weight) for i in ids] + [(ids[-1], 1.0)] * (77 - len(ids))])
        tokens.text = text
        return tokens

    def encode_from_tokens(self, tokens):
        self.calls += 1
        return toy_embed(self.tok, [tokens.text], dim=self.dim)


class _Tokens(dict):
    text = ""


class FakeVAE:
    """decode: [B,4,h,w] latents -> [B,8h,8w,3] images in 0..1."""

    def __init__(self):
        self.chunks = []

    def decode(self, samples):
        self.chunks.append(samples.shape[0])
        x = torch.nn.functional.interpolate(samples[:, :3].float(), scale_factor=8, mode="nearest")
        return torch.sigmoid(x).movedim(1, -1)


def make_latent(frames=FRAMES, seed=3, size=16):
    g = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn(frames, 4, size, size, generator=g) * 0.8 / SD_LATENT_SCALE}


def make_model(seed=0) -> VP2PModel:
    return vp2p_model_from_unet(tiny_unet(seed=seed))


def unet_state(model: VP2PModel):
    return {k: v.detach().clone() for k, v in model.video.unet.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def tune(model, latent, clip, **kw):
    """OneShotTune with the shipped widgets but gradient checkpointing (the same result, slower on CPU)."""
    return run(OneShotTune, vp2p_model=model, latent=latent, clip=clip, source_prompt=SRC,
               **{"gradient_checkpointing": False, **kw})


def invert(model, latent, clip, **kw):
    return run(NullTextVideoInvert, vp2p_model=model, latent=latent, clip=clip, source_prompt=SRC, **kw)[0]


def sample(model, inversion, e, **kw):
    return run(VideoP2PSampler, vp2p_model=model, inversion=inversion, edit=e, **kw)


def edit(clip, source=SRC, targets=TGT, **kw):
    return run(AttentionEditController, clip=clip, source_prompt=source, target_prompts=targets, **kw)[0]


# ---------------------------------------------------------------------------------------------------------
# definitions

ALL = list(NODE_MAP.items())


@pytest.mark.parametrize("name,cls", ALL, ids=[n for n, _ in ALL])
def test_node_definition_well_formed(name, cls):
    assert cls.CATEGORY == "Video-P2P"
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 20
    assert cls.GET_SCHEMA().display_name
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and spec["required"]
    names = []
    for section in ("required", "optional"):
        for inp, entry in spec.get(section, {}).items():
            names.append(inp)
            assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, inp
            kind = entry[0]
            opts = entry[1] if len(entry) > 1 else {}
            assert isinstance(opts.get("tooltip"), str) and opts["tooltip"].strip(), f"{name}.{inp}: no tooltip"
            if kind == "COMBO":
                choices = opts["options"]
                assert choices and all(isinstance(o, str) for o in choices)
                assert opts.get("default", choices[0]) in choices, f"{name}.{inp}: default not an option"
                continue
            assert isinstance(kind, str) and kind == kind.upper() and kind, f"{name}.{inp}: {kind!r}"
            if kind in ("INT", "FLOAT"):
                d = opts["default"]
                assert isinstance(d, int if kind == "INT" else float), f"{name}.{inp}: default type"
                assert opts["min"] <= d <= opts["max"], f"{name}.{inp}: default {d} outside min/max"
                if kind == "FLOAT":
                    assert opts.get("step", 0.01) <= max(abs(d), 1e-12) or d == 0 or opts["min"] == 0.0, \
                        f"{name}.{inp}: step coarser than the default"
                    if "round" in opts and opts["round"] is not False:
                        assert abs(round(d / opts["round"]) * opts["round"] - d) <= 1e-9 + 1e-6 * abs(d), \
                            f"{name}.{inp}: the UI would round the default {d}"
            elif kind == "BOOLEAN":
                assert isinstance(opts["default"], bool)
            elif kind == "STRING":
                assert isinstance(opts.get("default", ""), str)
            if inp == "seed":
                assert opts.get("control_after_generate") is False, "seed must not add a hidden control widget"
    rt = cls.RETURN_TYPES
    assert isinstance(rt, (tuple, list)) and rt and all(isinstance(t, str) and t == t.upper() for t in rt)
    assert len(cls.RETURN_NAMES) == len(rt) == len(cls.OUTPUT_TOOLTIPS)
    assert all(isinstance(t, str) and t for t in cls.OUTPUT_TOOLTIPS)
    params = inspect.signature(cls.execute).parameters
    takes_all = any(v.kind is inspect.Parameter.VAR_KEYWORD for v in params.values())
    for inp in names:
        assert takes_all or inp in params, f"{name}.execute does not take {inp}"
    required = [p for p, v in params.items() if v.default is inspect.Parameter.empty and v.kind in
                (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    assert set(required) <= set(spec["required"]), f"{name}: optional inputs need defaults"


def test_sixteen_nodes_with_their_saved_ids():
    assert sorted(NODE_MAP) == sorted([
        "VideoP2PVideoFrames", "NormaliseLight", "InflateUNet", "VideoP2PContextWindows", "OneShotTune",
        "NullTextVideoInvert",
        "AttentionEditController", "VideoP2PSampler",
        "StructureGuidance", "DecodeFrames", "AttentionMaps", "BlendMask", "SaveVP2PDelta", "LoadVP2PDelta",
        "SaveVP2PInversion", "LoadVP2PInversion"])


def test_helper_modules_import_without_comfyui():
    """Only the node modules import ComfyUI; the glue they use imports it inside the functions that need it."""
    code = ("import sys, nodes.types, nodes.files, nodes.text, nodes.host, nodes.convert, nodes.maps, "
            "nodes.controlnet; bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', "
            "'folder_paths')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_root_package_loads_like_comfyui_loads_it():
    """ComfyUI imports the folder with spec_from_file_location under a path-like module name."""
    mod_name = str(REPO).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(mod_name, REPO / "__init__.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    try:
        spec.loader.exec_module(mod)
        assert not hasattr(mod, "NODE_CLASS_MAPPINGS")  # ComfyUI would take those and skip comfy_entrypoint
        assert mod.WEB_DIRECTORY is None
        extension = asyncio.run(mod.comfy_entrypoint())
        assert isinstance(extension, latest.ComfyExtension)
        node_list = asyncio.run(extension.get_node_list())
        assert sorted(c.GET_SCHEMA().node_id for c in node_list) == sorted(NODE_MAP)
    finally:
        for k in [k for k in sys.modules if k == mod_name or k.startswith(mod_name + ".")]:
            del sys.modules[k]


def test_reweight_words_and_values():
    reweight = lambda w, v: EditOptions(reweight_words=w, reweight_values=v).reweight()
    assert reweight("origami", "2") == {"origami": 2.0}
    assert reweight("a, b", "2") == {"a": 2.0, "b": 2.0}
    assert reweight("a b", "2, 0.5") == {"a": 2.0, "b": 0.5}
    assert reweight("", "") == {}
    for words, values in [("a b", "1 2 3"), ("a", "x"), ("", "2"), ("a", "")]:
        with pytest.raises(VP2PInputError, match="reweight"):
            reweight(words, values)


# ---------------------------------------------------------------------------------------------------------
# the whole chain on tiny models

@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("vp2p_files")
    node_files.set_roots(output=base / "output", models=base / "models")
    yield base
    node_files.set_roots()


def cache_results(roots):
    """The cached results (not the latents kept beside each, files.NEAR_SUFFIX)."""
    return [q for q in (roots / "models" / "cache").iterdir() if not q.name.endswith(node_files.NEAR_SUFFIX)]


@pytest.fixture(scope="module")
def chain(roots):
    """InflateUNet's output -> OneShotTune -> NullTextVideoInvert, run as ComfyUI would."""
    clip = FakeClip()
    model = make_model()
    latent = make_latent()
    latent_before = latent["samples"].clone()
    base_before = unet_state(model)
    tuned, log_text = tune(model, latent, clip, steps=2, cache_dir="cache")
    inv = invert(tuned, latent, clip, steps=4, inner_steps=2, cache_dir="cache")
    return SimpleNamespace(clip=clip, model=model, tuned=tuned, log=log_text, latent=latent, inv=inv,
                           latent_before=latent_before, base_before=base_before)


def test_tune_returns_tuned_model_and_leaves_inputs(chain):
    assert isinstance(chain.tuned, VP2PModel) and chain.tuned is not chain.model
    assert chain.tuned.video is chain.model.video  # the base is shared, not copied
    assert chain.model.delta is None and isinstance(chain.tuned.delta, Delta)
    assert chain.tuned.delta.num_frames == FRAMES and len(chain.tuned.delta.losses) == 2
    assert chain.tuned.fingerprint != chain.model.fingerprint
    assert "2 steps" in chain.log and "loss" in chain.log
    assert torch.equal(chain.latent["samples"], chain.latent_before)
    assert same_state(unet_state(chain.model), chain.base_before), "tuning left the shared UNet changed"


def test_tune_and_invert_caches_are_reused(chain, roots):
    cached = sorted(p.name.split("-")[0] for p in cache_results(roots))
    assert cached == ["delta", "inversion"]
    again, log_text = tune(chain.model, chain.latent, chain.clip, steps=2, cache_dir="cache")
    inv = invert(again, chain.latent, chain.clip, steps=4, inner_steps=2, cache_dir="cache")
    assert log_text.startswith("loaded from cache")
    assert again.delta.fingerprint == chain.tuned.delta.fingerprint
    assert torch.equal(inv.x_T, chain.inv.x_T) and torch.equal(inv.null_embeddings, chain.inv.null_embeddings)
    assert torch.equal(inv.source_thumbnail, chain.inv.source_thumbnail)
    # an inversion cached before inversions kept a thumbnail of their clip gets one from the latents it is keyed by
    path = next(q for q in cache_results(roots) if q.name.startswith("inversion"))
    stripped = Inversion.load(path)
    stripped.source_thumbnail, stripped.model_aliases = None, ()
    stripped.save(path)
    assert Inversion.load(path).source_thumbnail is None
    inv = invert(again, chain.latent, chain.clip, steps=4, inner_steps=2, cache_dir="cache")
    assert torch.equal(inv.source_thumbnail, chain.inv.source_thumbnail)
    assert inv.model_aliases == chain.inv.model_aliases and len(inv.model_aliases) == 3  # and its precision aliases
    path = next(q for q in cache_results(roots) if q.name.startswith("delta"))
    stripped = Delta.load(path)
    stripped.base_aliases = ()
    stripped.save(path)
    reloaded, _ = tune(chain.model, chain.latent, chain.clip, steps=2, cache_dir="cache")
    assert reloaded.delta.base_aliases == chain.tuned.delta.base_aliases and len(reloaded.delta.base_aliases) == 3
    # another seed is another delta
    other, log2 = tune(chain.model, chain.latent, chain.clip, steps=2, seed=34, cache_dir="")
    assert not log2.startswith("loaded") and other.delta.fingerprint != chain.tuned.delta.fingerprint
    # a damaged cached file (a power cut, a full disk) is computed again and replaced, not an error on every run
    path.write_bytes(path.read_bytes()[:100])
    redone, log3 = tune(chain.model, chain.latent, chain.clip, steps=2, cache_dir="cache")
    assert not log3.startswith("loaded") and redone.delta.fingerprint == chain.tuned.delta.fingerprint
    assert Delta.load(path).fingerprint == chain.tuned.delta.fingerprint


def test_cache_keys_leave_out_what_changes_nothing_and_a_delta_knows_its_clip(chain, roots, caplog):
    """The tuning's cache key holds the prompt's words, not its spacing (a trailing newline recomputed a cached tuning
    for the same embedding), and not the context windows' fuse method, which tuning never reads (changing the
    sampler's blending re-ran the tuning). A delta keeps the text embedding it was tuned under: an inversion of the
    same prompt under another CLIP (CLIPSetLastLayer, a CLIP LoRA) is refused; under another prompt it is warned of,
    as before."""
    import logging

    from nodes.types import context_key
    from vp2p_core.context import ContextWindows
    from vp2p_core.options import ContextOptions

    again, log_text = run(OneShotTune, vp2p_model=chain.model, latent=chain.latent, clip=chain.clip,
                          source_prompt=SRC + "\n", gradient_checkpointing=False, steps=2, cache_dir="cache")
    assert log_text.startswith("loaded from cache")
    windows = {m: ContextWindows(ContextOptions(context_length=4, context_overlap=1, fuse_method=m))
               for m in ("pyramid", "relative", "flat")}
    tuning = [context_key(w, num_frames=9, fuse_weights=False) for w in windows.values()]
    assert tuning[0] == tuning[1] == tuning[2]
    assert len({str(context_key(w, num_frames=9)) for w in windows.values()}) == 3  # the inversion's keys differ
    delta = chain.tuned.delta
    assert delta.source_embedding is not None and tuple(delta.source_embedding.shape) == (1, 77, 32)
    path = roots / "output" / "embedding.delta.safetensors"
    delta.save(path)
    assert torch.equal(Delta.load(path).source_embedding, delta.source_embedding)

    class OtherLayer(FakeClip):  # the same prompt through another encoder (about 10% away)
        def encode_from_tokens(self, tokens):
            return super().encode_from_tokens(tokens) * 1.1

    with pytest.raises(VP2PInputError, match="^clip: the source prompt's embedding is 10% away from the one the model "
                                             "was tuned with"):
        invert(chain.tuned, chain.latent, OtherLayer(), steps=2, mode="fast", cache_dir="")
    with caplog.at_level(logging.WARNING):
        run(NullTextVideoInvert, vp2p_model=chain.tuned, latent=chain.latent, clip=OtherLayer(),
            source_prompt="a red ball on sand", steps=2, mode="fast", cache_dir="")
    assert "is not the prompt the model was tuned with" in caplog.text


def test_cache_files_a_newer_version_a_damaged_tensor_and_stale_temporaries(chain, roots, caplog):
    """A file in a newer format of ours is refused by name, not misread; a cached inversion whose timestep table is
    damaged (it loads, then fails in the reader) is computed again, not an error on every run; a temporary file a
    killed write left beside a cache entry a day ago goes at the next write, a fresh one (another process's write in
    progress) stays."""
    import os
    import time

    from safetensors.torch import save_file

    from vp2p_core.files import load_checked

    newer = roots / "output" / "newer.safetensors"
    newer.parent.mkdir(parents=True, exist_ok=True)
    save_file({"x": torch.zeros(2)}, str(newer), metadata={"vp2p_kind": "delta", "vp2p_format": "2"})
    with pytest.raises(VP2PInputError, match="format '2' of Video-P2P's files, newer than the '1'"):
        load_checked(newer, "delta")
    cache = roots / "models" / "cache"
    path = next(q for q in cache_results(roots) if q.name.startswith("inversion"))
    inv = Inversion.load(path)
    inv.timesteps = inv.timesteps[0]  # no table at all: the reader's shape[0] raised IndexError on every run
    inv.save(path)
    old_tmp, new_tmp = cache / (path.name + ".abc.tmp"), cache / (path.name + ".def.tmp")
    for t in (old_tmp, new_tmp):
        t.write_bytes(b"half a file")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(old_tmp, (day_ago, day_ago))
    users = cache / "inversion-notes.tmp"  # a file of the user's in the folder a workflow names: not a write of ours
    users.write_text("mine")
    os.utime(users, (day_ago, day_ago))
    redone = invert(chain.tuned, chain.latent, chain.clip, steps=4, inner_steps=2, cache_dir="cache")
    assert torch.equal(redone.x_T, chain.inv.x_T) and "computing it again" in caplog.text
    assert not old_tmp.exists() and new_tmp.exists() and users.read_text() == "mine"
    new_tmp.unlink()
    users.unlink()


def test_cache_keys_read_prompts_as_clip_does():
    """A prompt's case and spacing give the same key (CLIP's tokenizers lowercase, and the sampler calls them the same
    prompt), an embedding's name keeps its case (ComfyUI looks it up as written)."""
    assert node_files.prompt_key("A Red  Ball on grass\n") == node_files.prompt_key("a red ball on grass")
    assert node_files.prompt_key("embedding:X a") == "embedding:X a"


def test_the_same_clip_encoded_in_other_batches_finds_its_cache(chain, roots):
    """ComfyUI's VAE Encode splits its batch by the memory free at the time, and the same frames then differ in the
    last bits (1.2e-6 measured): the exact key missed, and a restart re-ran the tuning and the inversion. Latents
    equal up to float rounding find the cached results; a real change of the clip (a grey level in some pixels) does
    not."""
    x = chain.latent["samples"]
    rounding = dict(chain.latent, samples=x + 1e-6 * x.abs().max() * torch.randn_like(x))
    again, log_text = tune(chain.model, rounding, chain.clip, steps=2, cache_dir="cache")
    inv = invert(again, rounding, chain.clip, steps=4, inner_steps=2, cache_dir="cache")
    assert log_text.startswith("loaded from cache") and again.delta.fingerprint == chain.tuned.delta.fingerprint
    assert torch.equal(inv.x_T, chain.inv.x_T)
    changed = x.clone()
    changed[..., :2, :2] += 0.05  # a corner a little brighter
    other, log2 = tune(chain.model, dict(chain.latent, samples=changed), chain.clip, steps=2, cache_dir="cache")
    assert not log2.startswith("loaded")


def test_a_cache_that_cannot_be_written_costs_the_cache_not_the_result(chain, roots, monkeypatch, caplog):
    """A read-only models folder or a full disk: the tuned result is returned (with a warning that names cache_dir),
    not an OSError after all the work."""
    from safetensors import SafetensorError

    for error, seed in ((OSError(30, "Read-only file system"), 35), (SafetensorError("No space left on device"), 36)):
        def refuse(self, path, error=error):
            raise error

        monkeypatch.setattr(Delta, "save", refuse)
        caplog.clear()
        with caplog.at_level("WARNING"):
            tuned, log_text = tune(chain.model, chain.latent, chain.clip, steps=2, seed=seed, cache_dir="cache")
        assert tuned.delta is not None and not log_text.startswith("loaded")
        assert "could not cache the delta" in caplog.text and "cache_dir" in caplog.text


def test_inversion_lr_scale_is_used_and_keyed(chain, roots):
    """The optional lr_scale reaches the null-text optimiser and gets its own cache entry."""
    scaled = invert(chain.tuned, chain.latent, chain.clip, steps=4, inner_steps=2, cache_dir="cache", lr_scale=5.0)
    assert not torch.equal(scaled.null_embeddings, chain.inv.null_embeddings)
    assert torch.equal(scaled.x_T, chain.inv.x_T)  # DDIM inversion itself does not depend on it
    inversions = [q for q in cache_results(roots) if q.name.startswith("inversion")]
    assert len(inversions) == 2


def test_inversion_output(chain):
    inv = chain.inv
    assert isinstance(inv, Inversion)
    assert inv.num_frames == FRAMES and inv.num_steps == 4 and inv.mode == "null_text"
    assert inv.model_fingerprint == chain.tuned.fingerprint
    assert tuple(inv.x_T.shape) == (FRAMES, 4, 16, 16)
    assert same_state(unet_state(chain.model), chain.base_before), "inversion left the shared UNet changed"


def test_edit_controller_builds_plan_with_embeddings(chain):
    e = edit(chain.clip, SRC, "a blue ball on grass\na green ball on grass", blend_words="ball")
    assert isinstance(e, VP2PEdit)
    p = e.plan
    assert p.mode == "replace" and p.num_targets == 2
    assert tuple(p.source_embedding.shape) == (1, 77, 32)
    assert tuple(p.target_embeddings.shape) == (2, 77, 32)
    assert tuple(p.empty_embedding.shape) == (1, 77, 32)
    assert e.token_labels[0][1:-1] == SRC.split()
    r = edit(chain.clip, SRC, "a red paper ball on grass", reweight_words="paper", reweight_values="2")
    assert r.plan.mode == "refine" and r.plan.equalizer is not None and float(r.plan.equalizer.max()) == 2.0


def test_sampler_outputs_and_leaves_inputs_unchanged(chain):
    e = edit(chain.clip, SRC, "a blue ball on grass\na green ball on grass", blend_words="ball")
    plan_mapper = e.plan.mapper.clone()
    latent_x = chain.inv.x_T.clone()
    edited, source, maps = sample(chain.tuned, chain.inv, e, latent=chain.latent)
    assert set(edited) == {"samples"} and tuple(edited["samples"].shape) == (2 * FRAMES, 4, 16, 16)
    assert tuple(source["samples"].shape) == (FRAMES, 4, 16, 16)
    assert torch.isfinite(edited["samples"]).all()
    # null-text + same guidance: the source branch is the inversion's own trajectory, unscaled for LATENT
    assert torch.allclose(source["samples"] * SD_LATENT_SCALE, chain.inv.trajectory[-1], atol=1e-5)
    assert isinstance(maps, VP2PMaps) and maps.maps.shape[0] == 3 and maps.maps.shape[-1] == 77
    assert maps.blend_mask is not None and tuple(maps.blend_mask.shape[:2]) == (2, FRAMES)
    assert torch.equal(chain.inv.x_T, latent_x) and torch.equal(e.plan.mapper, plan_mapper)
    assert same_state(unet_state(chain.model), chain.base_before), "sampling left the shared UNet changed"

    grid, mask = run(AttentionMaps, attention_maps=maps, frame=-1, cell_size=32)
    grid0, _ = run(AttentionMaps, attention_maps=maps, frame=0, cell_size=32)
    assert grid.dim() == 4 and grid.shape[0] == 1 and grid.shape[-1] == 3
    assert float(grid.min()) >= 0 and float(grid.max()) <= 1
    assert grid.shape[1] == 3 * (32 + 14) and grid.shape[2] == 5 * 32  # 3 prompts x 5 words
    assert grid0.shape == grid.shape
    assert tuple(mask.shape) == (2 * FRAMES, 128, 128)
    with pytest.raises(VP2PInputError, match="frame"):
        run(AttentionMaps, attention_maps=maps, frame=FRAMES, cell_size=32)

    vae = FakeVAE()
    images = run(DecodeFrames, vae=vae, latent=edited, frames_per_chunk=4)[0]
    assert tuple(images.shape) == (2 * FRAMES, 128, 128, 3)
    assert vae.chunks == [4, 2]
    assert float(images.min()) >= 0 and float(images.max()) <= 1


def test_decode_frames_reports_each_chunk_and_stops_between_chunks(monkeypatch):
    """Decode Frames fills ComfyUI's progress bar chunk by chunk and checks the stop button between chunks (the
    host ComfyUI gives, here a stand-in that stops after the second chunk)."""
    from nodes import host as node_host
    from vp2p_core import Host
    from vp2p_core.host import Interrupted

    reports, checks = [], []

    def interrupt():
        checks.append(1)
        if len(checks) == 2:
            raise Interrupted("stop")

    monkeypatch.setattr(node_host, "progress_host", lambda: Host(
        progress=lambda step, total, preview: reports.append((step, total)), interrupt=interrupt))
    vae = FakeVAE()
    with pytest.raises(Interrupted):
        run(DecodeFrames, vae=vae, latent=make_latent(frames=5), frames_per_chunk=2)
    assert vae.chunks == [2, 2] and reports == [(1, 3)]  # stopped after the second of three chunks
    monkeypatch.setattr(node_host, "progress_host", lambda: Host(
        progress=lambda step, total, preview: reports.append((step, total))))
    reports.clear()
    run(DecodeFrames, vae=FakeVAE(), latent=make_latent(frames=5), frames_per_chunk=2)
    assert reports == [(1, 3), (2, 3), (3, 3)]


def test_normalise_light_takes_the_light_out_and_decode_frames_puts_it_back():
    """Normalise Light's frames are the clip as if evenly lit; Decode Frames given its light returns the decoded
    frames times each frame's gain, for every target's frames, and without it the frames as decoded."""
    from vp2p_core import restore_light
    from nodes.types import VP2PLight

    g = torch.Generator().manual_seed(5)
    clip = (0.2 + 0.3 * torch.rand(1, 128, 128, 3, generator=g)).repeat(FRAMES, 1, 1, 1)  # the decodes' size
    gains = torch.linspace(0.8, 1.1, FRAMES)[:, None] * torch.tensor([1.0, 0.95, 0.9])
    even, light = run(NormaliseLight, images=clip * gains[:, None, None, :])
    assert isinstance(light, VP2PLight) and tuple(light.gains.shape) == (FRAMES, 3)
    assert light.frame_size == (128, 128)
    assert torch.allclose(light.gains, gains / gains.max(dim=0).values, atol=1e-6)
    assert torch.allclose(even, clip * gains.max(dim=0).values, atol=1e-6)  # every frame in the brightest one's light
    latent = make_latent(frames=2 * FRAMES)  # two targets' frames
    plain = run(DecodeFrames, vae=FakeVAE(), latent=latent)[0]
    lit = run(DecodeFrames, vae=FakeVAE(), latent=latent, light=light)[0]
    assert torch.equal(lit, restore_light(plain, light.gains))
    assert torch.allclose(lit[FRAMES:], (plain[FRAMES:] * light.gains[:, None, None, :]).clamp(0, 1), atol=1e-6)
    # a light measured on frames of another size is another clip's (the frame count alone let it through)
    other = run(NormaliseLight, images=clip[:, :64, :64] * gains[:, None, None, :])[1]
    with pytest.raises(VP2PInputError, match="light: measured on frames of 64x64, but the latent decodes to 128x128"):
        run(DecodeFrames, vae=FakeVAE(), latent=latent, light=other)
    # frames VAE Encode cropped to whole latent pixels (133 -> 128) are the same clip's
    cropped = run(NormaliseLight, images=torch.cat([clip, clip[:, :5]], 1)[:, :133, :133] * gains[:, None, None, :])[1]
    assert run(DecodeFrames, vae=FakeVAE(), latent=latent, light=cropped)[0].shape == lit.shape


def comfyui_image_composite_masked():
    """ComfyUI's ImageCompositeMasked from its source in the ComfyUI tree (its module imports ComfyUI's nodes.py,
    which our ``nodes`` package shadows here, so only the class and its ``composite`` function are loaded)."""
    import comfy.utils  # noqa: F401
    import node_helpers

    path = Path(sys.modules["comfy.utils"].__file__).parents[1] / "comfy_extras" / "nodes_mask.py"
    tree = ast.parse(path.read_text())
    keep = [n for n in tree.body if getattr(n, "name", None) in ("composite", "ImageCompositeMasked")]
    assert len(keep) == 2, f"{path}: composite or ImageCompositeMasked not found"
    namespace = {"torch": torch, "comfy": sys.modules["comfy"], "node_helpers": node_helpers, "MAX_RESOLUTION": 16384}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["ImageCompositeMasked"]()


def test_attention_maps_of_a_wide_clip_keep_its_aspect():
    """A 16:9-like clip's word maps are drawn as wide as the clip is (they were squeezed into square cells): a map
    hot on its left third is hot on its cell's left third."""
    from nodes.maps import attention_grid

    maps = torch.zeros(1, 2, 8, 12, 77)
    maps[..., :, :4, 1] = 1.0  # the first word: the left third
    maps[..., 2] = 1.0
    labels = [["<|startoftext|>", "ball", "grass", "<|endoftext|>"]]
    grid = attention_grid(maps, labels, frame=-1, cell=32)
    assert tuple(grid.shape) == (1, 32 + 14, 2 * 48, 3)
    cell = grid[0, :32, :48].sum(-1)
    assert bool((cell[:, :16] > 0.9).all()) and bool((cell[:, 16:] == 0).all())


def test_a_16_by_9_clip_edits_at_its_own_size(roots):
    """A clip whose latents the UNet's downsampling does not divide (512x288 in SD: a 64x36 latent, grids down to
    8x5) tunes, inverts and edits with local blend, and Blend Mask gives masks at its image size; such clips were
    refused ("resize to a multiple of 64 pixels"), so 16:9 footage had to be cropped."""
    g = torch.Generator().manual_seed(5)
    latent = {"samples": torch.randn(FRAMES, 4, 9, 16, generator=g) * 0.8 / SD_LATENT_SCALE}
    clip = FakeClip()
    tuned, _ = tune(make_model(), latent, clip, steps=1, cache_dir="")
    inv = invert(tuned, latent, clip, steps=3, mode="fast", cache_dir="")
    edited, _, maps = sample(tuned, inv, edit(clip, blend_words="ball", mask_threshold=0.9))
    assert tuple(edited["samples"].shape) == (FRAMES, 4, 9, 16) and torch.isfinite(edited["samples"]).all()
    mask = run(BlendMask, attention_maps=maps, images=torch.rand(FRAMES, 72, 128, 3))[0]
    assert tuple(mask.shape) == (FRAMES, 72, 128) and 0 < float(mask.mean()) < 1


def test_without_local_blend_the_blend_mask_output_is_the_whole_frame(chain):
    """No blend words and no noise_mask: the whole frame was edited, so AttentionMaps' blend_mask is all one at
    frame size per output frame, as Blend Mask gives it (it was one 64x64 frame of zeros: "nothing edited"), and
    Blend Mask gives one per edited frame of every target (it gave one per frame of the images it was handed)."""
    _, _, maps = sample(chain.tuned, chain.inv, edit(chain.clip, SRC, TGT))
    assert maps.blend_mask is None
    mask = run(AttentionMaps, attention_maps=maps, frame=-1, cell_size=32)[1]
    assert tuple(mask.shape) == (FRAMES, 128, 128) and bool(mask.eq(1).all())
    # Blend Mask too, one per edited frame of each target, given the clip's frames or the decoded edit
    _, _, two = sample(chain.tuned, chain.inv, edit(chain.clip, SRC, TGT + "\na green ball on grass"))
    for frames in (FRAMES, 2 * FRAMES):
        out = run(BlendMask, attention_maps=two, images=torch.rand(frames, 128, 128, 3))[0]
        assert tuple(out.shape) == (2 * FRAMES, 128, 128) and bool(out.eq(1).all())
    # another count is refused, as with local blend (5 masks were handed back for 5 frames)
    with pytest.raises(VP2PInputError, match=f"^images: {FRAMES + 2} frames, but the edit has {FRAMES} frames for "
                                             "each of 2 targets"):
        run(BlendMask, attention_maps=two, images=torch.rand(FRAMES + 2, 128, 128, 3))


def test_blend_mask_warns_where_image_composite_masked_would_keep_target_one_alone(chain, caplog):
    """Two targets, and the clip's own F frames as source_images (Image Composite Masked's destination): ComfyUI
    cuts the 2F edited frames and masks to F, and the second target never reaches the video. Blend Mask says so and
    names Repeat Image Batch; with the frames repeated per target it says nothing."""
    import logging

    _, _, two = sample(chain.tuned, chain.inv, edit(chain.clip, SRC, TGT + "\na green ball on grass",
                                                    blend_words="ball"))
    images, frames = torch.rand(2 * FRAMES, 128, 128, 3), torch.rand(FRAMES, 128, 128, 3)
    with caplog.at_level(logging.WARNING, logger="nodes.nodes_composite"):
        run(BlendMask, attention_maps=two, images=images, source_images=frames)
    assert "keeps target 1 alone" in caplog.text and "Repeat Image Batch (amount 2)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nodes.nodes_composite"):
        run(BlendMask, attention_maps=two, images=images, source_images=frames.repeat(2, 1, 1, 1))
    assert "keeps target 1 alone" not in caplog.text


def test_a_noise_mask_is_the_samplers_edit_region(chain, caplog):
    """Set Latent Noise Mask's noise_mask on the sampler's latent confines the edit: outside it the edited LATENT is
    the source's, bit for bit, and the blend_mask output is the region. The inversion node ignores it, saying so."""
    e = edit(chain.clip, SRC, TGT)
    mask = torch.zeros(1, 1, 128, 128)  # ComfyUI's layout, at image size: the top half of every frame
    mask[..., :64, :] = 1
    latent = {**chain.latent, "noise_mask": mask}
    edited, source, maps = sample(chain.tuned, chain.inv, e, latent=latent)
    assert torch.equal(edited["samples"][..., 8:, :], source["samples"][..., 8:, :])
    assert (edited["samples"][..., :8, :] - source["samples"][..., :8, :]).abs().flatten(1).amax(-1).gt(1e-3).all()
    assert torch.equal(run(AttentionMaps, attention_maps=maps, frame=-1, cell_size=32)[1],
                       mask[:, 0].expand(FRAMES, -1, -1))
    with pytest.raises(VP2PInputError, match="latent's noise_mask: 2 masks of \\(128, 128\\) for a clip of 3 frames"):
        sample(chain.tuned, chain.inv, e, latent={**chain.latent, "noise_mask": torch.ones(2, 1, 128, 128)})
    with caplog.at_level("WARNING", logger="nodes.types"):
        invert(chain.tuned, latent, chain.clip, steps=4, inner_steps=2, cache_dir="cache")
    assert "latent: its noise_mask is ignored here; only Video-P2P Sampler's latent input uses one" in caplog.text


def test_sampler_asks_for_the_working_memory_of_its_clips(chain, monkeypatch):
    """The sampler's estimate for ComfyUI: 1 + 2n clips (the source, replaying its null-text path; n targets and
    their unconditional passes) of all frames in one UNet call, plus the source's unconditional pass where it does
    not replay its path, and n contrast clips with edit guidance; at these 16x16 latents, 1/16 of SD's area. (It
    counted the source's unconditional pass always: a clip's room too many with the defaults.)"""
    import nodes.host
    import nodes.nodes_sample

    asked = []

    def make_host(model, **kw):
        asked.append(kw["memory_required"])
        return nodes.host.make_host(model, **kw)

    monkeypatch.setattr(nodes.nodes_sample, "make_host", make_host)
    sample(chain.tuned, chain.inv, edit(chain.clip, SRC, "a blue ball on grass\na green ball on grass"))
    sample(chain.tuned, chain.inv, edit(chain.clip, SRC, TGT), edit_guidance=2.0)
    sample(chain.tuned, chain.inv, edit(chain.clip, SRC, TGT), guidance=5.0)  # not its path: computed, uncond too
    per_frame = 238 * 2 ** 20 / 16
    assert asked == [int(5 * FRAMES * per_frame), int(4 * FRAMES * per_frame), int(4 * FRAMES * per_frame)]


def test_blend_mask_composites_through_comfyui_image_composite_masked(chain):
    """BlendMask's per-frame masks at image size into ComfyUI's ImageCompositeMasked (destination = the source
    frames, source = the decoded edit): the source's pixels where the mask is 0, the edit's where it is 1, as the
    core's composite_frames makes them."""
    e = edit(chain.clip, SRC, TGT, blend_words="ball", mask_threshold=0.9)
    edited, _, maps = sample(chain.tuned, chain.inv, e)
    images = run(DecodeFrames, vae=FakeVAE(), latent=edited)[0]  # [F,128,128,3]
    frames = torch.rand(FRAMES, 128, 128, 3, generator=torch.Generator().manual_seed(1))
    options = CompositeOptions(composite=True, mask_dilation=8, feather=4)
    mask = run(BlendMask, attention_maps=maps, images=images, mask_dilation=8, feather=4)[0]
    assert tuple(mask.shape) == (FRAMES, 128, 128)
    assert torch.equal(mask, composite_mask(maps.blend_mask, (128, 128), options).flatten(0, 1))
    assert 0 < float(mask.mean()) < 1 and ((mask > 0) & (mask < 1)).any(), "the test needs a mask with a feather"
    assert [float(m.sum()) for m in mask] != [float(mask[0].sum())] * FRAMES, "the test needs masks per frame"
    out = comfyui_image_composite_masked().composite(destination=frames, source=images, x=0, y=0,
                                                    resize_source=False, mask=mask)[0]
    outside, inside = mask == 0, mask == 1
    assert torch.equal(out[outside], frames[outside]) and torch.equal(out[inside], images[inside])
    core = composite_frames(edited=images, source=frames, mask=maps.blend_mask[0], options=options)
    assert torch.allclose(out, core, atol=1e-6)
    # a recolour's mask is the region the sampler blended in: with recolour_margin off, no dilation or feather
    assert maps.blend_outline
    hard = run(BlendMask, attention_maps=maps, images=images, mask_dilation=8, feather=4, recolour_margin=False)[0]
    assert torch.equal(hard, image_mask(maps.blend_mask, (128, 128)).flatten(0, 1))
    assert float(hard.sum()) < float(mask.sum()) and set(hard.unique().tolist()) <= {0.0, 1.0}
    # the source frames give the same mask; other frame counts or sizes are refused naming images
    assert torch.equal(run(BlendMask, attention_maps=maps, images=frames, mask_dilation=8, feather=4)[0], mask)
    for bad, message in [(images[:2], "images: 2 frames, but the edit has 3 frames"),
                         (torch.rand(FRAMES, 100, 100, 3), "images: a 16x16 mask does not fit frames of 100x100")]:
        with pytest.raises(VP2PInputError, match=message):
            run(BlendMask, attention_maps=maps, images=bad)
    # without local blend the whole frame is the edit
    plain = sample(chain.tuned, chain.inv, edit(chain.clip, SRC, TGT))[2]
    assert torch.equal(run(BlendMask, attention_maps=plain, images=images)[0], torch.ones(FRAMES, 128, 128))
    # change_threshold with the source frames: the core's composite, through ImageCompositeMasked
    near = (frames + (images - frames) * torch.linspace(0, 1, 128)[None, None, :, None]).clamp(0, 1)
    changed = options.replace(change_threshold=0.3)
    mask = run(BlendMask, attention_maps=maps, images=near, source_images=frames, mask_dilation=8, feather=4,
               change_threshold=0.3)[0]
    out = comfyui_image_composite_masked().composite(destination=frames, source=near, x=0, y=0,
                                                    resize_source=False, mask=mask)[0]
    core = composite_frames(edited=near, source=frames, mask=maps.blend_mask[0], options=changed)
    assert torch.allclose(out, core, atol=1e-6)
    kept = (mask == 0) & (composite_mask(maps.blend_mask, (128, 128), options).flatten(0, 1) == 1)
    assert kept.any(), "the test needs pixels of the mask that the edit hardly changed"
    assert torch.equal(out[kept], frames[kept])
    # refine_radius: the mask snapped to the edges of the source and the edit, the core's composite again
    refined = options.replace(change_threshold=0.3, refine_radius=6)
    mask = run(BlendMask, attention_maps=maps, images=near, source_images=frames, mask_dilation=8, feather=4,
               change_threshold=0.3, refine_radius=6)[0]
    out = comfyui_image_composite_masked().composite(destination=frames, source=near, x=0, y=0,
                                                    resize_source=False, mask=mask)[0]
    core = composite_frames(edited=near, source=frames, mask=maps.blend_mask[0], options=refined,
                           outline=maps.blend_outline)
    assert torch.allclose(out, core, atol=1e-6)
    unrefined = run(BlendMask, attention_maps=maps, images=near, source_images=frames, mask_dilation=8, feather=4,
                    change_threshold=0.3)[0]
    assert not torch.equal(mask, unrefined), "refine_radius did not move the mask"
    # refinement alone reads colour channels only: an RGBA clip beside the RGB edit, and the clip itself as images
    rgba = torch.cat([frames, torch.ones(FRAMES, 128, 128, 1)], -1)
    alone = run(BlendMask, attention_maps=maps, images=near, source_images=rgba, mask_dilation=8, feather=4,
                refine_radius=6)[0]
    assert torch.equal(alone, composite_mask(maps.blend_mask, (128, 128), refined.replace(change_threshold=0.0),
                                             guides=(frames.expand(1, *frames.shape), near[None]),
                                             outline=maps.blend_outline).flatten(0, 1))
    run(BlendMask, attention_maps=maps, images=frames, source_images=frames, refine_radius=6)
    # occluder_threshold: the core's occluder test on the source frames, through the node
    found = run(BlendMask, attention_maps=maps, images=near, source_images=frames, mask_dilation=8, feather=4,
                occluder_threshold=0.3)[0]
    assert torch.equal(found, composite_mask(maps.blend_mask, (128, 128), options.replace(occluder_threshold=0.3),
                                             guides=(frames.expand(1, *frames.shape), near[None]),
                                             outline=maps.blend_outline).flatten(0, 1))
    whole = run(BlendMask, attention_maps=maps, images=near, source_images=frames, mask_dilation=8, feather=4)[0]
    assert (found <= whole).all() and not torch.equal(found, whole), "the noise frames' odd colours were not taken out"
    # frames go through in chunks (ComfyUI's progress bar and stop button between them): the same weights, since
    # every frame's is its own
    import nodes.nodes_composite as composite_node

    every = dict(mask_dilation=8, feather=4, change_threshold=0.3, refine_radius=6)
    at_once = run(BlendMask, attention_maps=maps, images=near, source_images=frames, **every)[0]
    chunk, real = composite_node.COMPOSITE_CHUNK, composite_node.composite_alpha
    calls = []
    try:
        composite_node.COMPOSITE_CHUNK = 2  # 3 frames: a chunk of 2 and one of 1
        composite_node.composite_alpha = lambda mask, **kw: calls.append(mask.shape[1]) or real(mask, **kw)
        assert torch.equal(run(BlendMask, attention_maps=maps, images=near, source_images=frames, **every)[0], at_once)
        assert calls == [2, 1]
        # the occluder test reads the object's colour over the whole clip: one piece
        calls.clear()
        run(BlendMask, attention_maps=maps, images=near, source_images=frames, occluder_threshold=0.3, **every)
        assert calls == [FRAMES]
    finally:
        composite_node.COMPOSITE_CHUNK, composite_node.composite_alpha = chunk, real
    needs = "source_images: change_threshold, refine_radius and occluder_threshold above 0"
    for kw, message in [(dict(), needs + " compare"),
                        (dict(source_images=frames[:2]), "source_images: expected the edit's 3 frames of 128x128"),
                        (dict(source_images=near.clone()), "images: the same frames as source_images")]:
        with pytest.raises(VP2PInputError, match=message):
            run(BlendMask, **{"attention_maps": maps, "images": near, "change_threshold": 0.3, **kw})
    for name, value in (("refine_radius", 6), ("occluder_threshold", 0.3)):
        with pytest.raises(VP2PInputError, match=needs):
            run(BlendMask, attention_maps=maps, images=near, **{name: value})


def test_untuned_model_runs_fast_inversion_and_edit(roots):
    """Tuning is optional: an untuned model inverts (fast mode) and edits."""
    clip, model, latent = FakeClip(), make_model(), make_latent(frames=2)
    inv = invert(model, latent, clip, steps=3, mode="fast", inner_steps=1, cache_dir="")
    e = edit(clip, SRC, TGT, edit_mode="none")
    edited, source, maps = sample(model, inv, e)
    assert tuple(edited["samples"].shape) == (2, 4, 16, 16)
    assert inv.null_embeddings is None


def test_save_replaces_its_own_kind_only_and_load_reads_no_tensor_of_another_file(chain, roots, monkeypatch):
    """A Save node replaces a file of the name only where it is a delta (an inversion) already: a checkpoint another
    node saved under output/ was overwritten (core nodes never do). A Load node given a file that is not ours refuses
    it from the header, before reading a tensor (a multi-GB checkpoint named by mistake was read whole first)."""
    from header_only import header_only
    from safetensors.torch import save_file

    checkpoint = roots / "output" / "checkpoints" / "ComfyUI_00001_.safetensors"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_file({"model.weight": torch.ones(3)}, str(checkpoint))
    before = checkpoint.read_bytes()
    with pytest.raises(VP2PInputError, match="^filename: .*ComfyUI_00001_.safetensors' exists and is a safetensors "
                                             "file without Video-P2P's metadata, not a delta file"):
        run(SaveVP2PDelta, vp2p_model=chain.tuned, filename="checkpoints/ComfyUI_00001_")
    with pytest.raises(VP2PInputError, match="exists and is a delta file, not an inversion file"):
        run(SaveVP2PDelta, vp2p_model=chain.tuned, filename="vp2p/mine.delta")
        run(SaveVP2PInversion, inversion=chain.inv, filename="vp2p/mine.delta")
    run(SaveVP2PDelta, vp2p_model=chain.tuned, filename="vp2p/mine.delta")  # its own kind: replaced
    cut = roots / "output" / "vp2p" / "cut.delta.safetensors"  # a copy cut short: nothing says it is ours
    cut.write_bytes((roots / "output" / "vp2p" / "mine.delta.safetensors").read_bytes()[:-100])
    with pytest.raises(VP2PInputError, match="cut.delta.safetensors' exists and is not a readable safetensors file"):
        run(SaveVP2PDelta, vp2p_model=chain.tuned, filename="vp2p/cut.delta")
    assert checkpoint.read_bytes() == before

    from vp2p_core import files as core_files

    monkeypatch.setattr(core_files, "safe_open", header_only())
    with pytest.raises(VP2PInputError, match="without Video-P2P's metadata, not a delta file"):
        run(LoadVP2PDelta, vp2p_model=chain.model, filename="checkpoints/ComfyUI_00001_.safetensors")


def test_save_and_load_delta_and_inversion(chain, roots):
    out = run(SaveVP2PDelta, vp2p_model=chain.tuned, filename="vp2p/ball.delta")
    out_inv = run(SaveVP2PInversion, inversion=chain.inv, filename="vp2p/ball.inversion.safetensors")
    assert out.result == ("vp2p/ball.delta.safetensors",) and out.ui == {"text": ["saved vp2p/ball.delta.safetensors"]}
    assert (roots / "output" / "vp2p" / "ball.delta.safetensors").is_file()
    assert (roots / "output" / "vp2p" / "ball.inversion.safetensors").is_file()
    loaded = run(LoadVP2PDelta, vp2p_model=chain.model, filename="vp2p/ball.delta.safetensors", latent=chain.latent)[0]
    inv = run(LoadVP2PInversion, vp2p_model=loaded, filename=out_inv[0], latent=chain.latent)[0]
    assert loaded.fingerprint == chain.tuned.fingerprint
    assert torch.equal(inv.x_T, chain.inv.x_T)
    state = LoadVP2PDelta.fingerprint_inputs(filename="vp2p/ball.delta.safetensors")
    assert "ball.delta.safetensors" in state
    # a name in both folders: the newer file is read (a Save writes to output/; an older copy under models/vp2p
    # must not shadow it), with a warning
    import os

    saved = roots / "output" / "vp2p" / "ball.delta.safetensors"
    models_copy = roots / "models" / "vp2p" / "ball.delta.safetensors"
    models_copy.parent.mkdir(parents=True, exist_ok=True)
    models_copy.write_bytes(saved.read_bytes())
    os.utime(models_copy, (saved.stat().st_mtime + 10,) * 2)
    assert node_files.load_path("vp2p/ball.delta", "filename") == models_copy
    os.utime(models_copy, (saved.stat().st_mtime - 10,) * 2)
    assert node_files.load_path("vp2p/ball.delta", "filename") == saved
    # the sampler on loaded files gives what it gives on the originals
    e = edit(chain.clip, blend_words="ball")
    a = sample(chain.tuned, chain.inv, e)[0]["samples"]
    b = sample(loaded, inv, e)[0]["samples"]
    assert torch.allclose(a, b, atol=1e-6)


def test_inflate_node_wires_conversion(monkeypatch):
    """InflateUNet = conversion (ComfyUI) + inflation; the conversion is swapped for a tiny UNet here."""
    from nodes import convert

    calls = {}

    def fake_convert(model, weight_dtype):
        calls["dtype"] = weight_dtype
        with torch.inference_mode(False):  # as unet_from_ldm_state_dict builds it
            unet = tiny_unet()
        return unet, "v_prediction", 0.13, "LATENT_FORMAT", {"model": "fake"}

    monkeypatch.setattr(convert, "comfy_model_to_unet", fake_convert)
    # ComfyUI's ModelPatcher counts the model's size when it is made: it must see the temporal layers
    monkeypatch.setattr(convert, "make_patcher", lambda unet: sum(p.numel() for p in unet.parameters()))
    vm = run(InflateUNet, model=object(), frame_attention="first_prev", group_norm="clip")[0]
    assert vm.patcher == sum(p.numel() for p in vm.video.unet.parameters()) > sum(p.numel() for p in
                                                                                 tiny_unet().parameters())
    assert isinstance(vm, VP2PModel) and calls["dtype"] == "fp32"
    assert vm.video.schedule.prediction_type == "v_prediction" and vm.latent_scale == 0.13
    assert vm.video.frame_attention == "first_prev" and vm.latent_format == "LATENT_FORMAT"
    assert vm.video.group_norm == "clip" and vm.video.state.group_norm == "clip"
    assert not any(p.is_inference() for p in vm.video.unet.parameters())


def test_context_key_marks_windows_whose_stages_changed():
    """Cached results made through ComfyUI's uniform schedules or with first_prev windows were made before the
    stages met those windows as they do now: their key carries the revision, the core schedules' keys are as
    they were."""
    from nodes.types import context_key
    from vp2p_core.context import ContextWindows
    from vp2p_core.options import ContextOptions

    static = ContextWindows(ContextOptions())
    assert context_key(None) == {} and context_key(static) == {"context": static.options.cache_key()}
    assert context_key(static, frame_attention="first_prev")["windows_revision"] == 2
    looped = ContextWindows(ContextOptions(context_schedule="looped_uniform"))
    assert context_key(looped)["windows_revision"] == 2
    relative = ContextWindows(ContextOptions(context_schedule="looped_uniform", fuse_method="relative"))
    assert context_key(relative)["windows_revision"] == 3  # its weights on a wrapping window changed
    assert "windows_revision" not in context_key(ContextWindows(ContextOptions(fuse_method="relative")))
    looped_prev = context_key(looped, frame_attention="first_prev")  # a second copy of frame 0 reads frame 0
    assert looped_prev["windows_revision"] == 4
    # what a schedule ignores is not in its key: toggling it recomputes nothing (the default's key is as it was)
    for changed in (dict(context_stride=3), dict(closed_loop=True)):
        assert context_key(ContextWindows(ContextOptions(**changed))) == context_key(static)
    uniform = ContextWindows(ContextOptions(context_schedule="standard_uniform"))
    assert context_key(ContextWindows(ContextOptions(context_schedule="standard_uniform", closed_loop=True))) \
        == context_key(uniform)
    assert context_key(ContextWindows(ContextOptions(context_schedule="standard_uniform", context_stride=2))) \
        != context_key(uniform)
    assert context_key(ContextWindows(ContextOptions(context_schedule="looped_uniform", closed_loop=True))) \
        != context_key(looped)
    # a clip that fits one window is the whole clip to every stage (bit for bit): the key of no windows
    assert context_key(static, num_frames=16) == {} and context_key(static, num_frames=17) == context_key(static)
