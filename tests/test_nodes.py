"""Node layer without ComfyUI: definitions are well formed, and every node runs on tiny models.

Fake CLIP / VAE objects stand in for ComfyUI's; the VP2P_MODEL is built from a tiny diffusers UNet
(InflateUNet's ComfyUI conversion is the one step bypassed, and is covered by tests/integration).
Node functions run under torch.inference_mode(), as ComfyUI runs them.
"""
from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import nodes
from nodes import files as node_files
from nodes.nodes_vp2p import (AttentionEditController, AttentionMaps, DecodeFrames, InflateUNet, LoadVP2PDelta,
                              LoadVP2PInversion, NullTextVideoInvert, OneShotTune, SaveVP2PDelta, SaveVP2PInversion,
                              VideoP2PSampler, parse_reweight, target_lines)
from nodes.types import VP2PEdit, VP2PMaps, VP2PModel, vp2p_model_from_unet
from vp2p_core import Delta, Inversion, VP2PInputError
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
        return {"l": text}

    def encode_from_tokens(self, tokens):
        self.calls += 1
        return toy_embed(self.tok, [tokens["l"]], dim=self.dim)


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
    return {"samples": torch.randn(frames, 4, size, size, generator=g) * 0.8 / 0.18215}


def make_model(seed=0) -> VP2PModel:
    return vp2p_model_from_unet(tiny_unet(seed=seed), "epsilon", 0.18215, "first")


def unet_state(model: VP2PModel):
    return {k: v.detach().clone() for k, v in model.video.unet.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


EDIT_DEFAULTS = dict(edit_mode="auto", cross_replace=0.2, self_replace=0.5, self_replace_on="temporal",
                     blend_words="", blend_target_words="", reweight_words="", reweight_values="",
                     mask_threshold=0.3, blend_start=0.2)


def edit(clip, source=SRC, targets=TGT, **kw):
    args = dict(EDIT_DEFAULTS, **kw)
    with torch.inference_mode():
        return AttentionEditController().build(clip, source, targets, **args)[0]


# ---------------------------------------------------------------------------------------------------------
# definitions

ALL = list(nodes.NODE_CLASS_MAPPINGS.items())


@pytest.mark.parametrize("name,cls", ALL, ids=[n for n, _ in ALL])
def test_node_definition_well_formed(name, cls):
    assert cls.CATEGORY == "Video-P2P"
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 20
    assert name in nodes.NODE_DISPLAY_NAME_MAPPINGS
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
            if isinstance(kind, list):
                assert kind and all(isinstance(o, str) for o in kind)
                assert opts.get("default", kind[0]) in kind, f"{name}.{inp}: default not an option"
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
    assert isinstance(rt, tuple) and rt and all(isinstance(t, str) and t == t.upper() for t in rt)
    assert len(cls.RETURN_NAMES) == len(rt) == len(cls.OUTPUT_TOOLTIPS)
    assert all(isinstance(t, str) and t for t in cls.OUTPUT_TOOLTIPS)
    fn = getattr(cls, cls.FUNCTION)
    params = inspect.signature(fn).parameters
    for inp in names:
        assert inp in params, f"{name}.{cls.FUNCTION} does not take {inp}"
    required = [p for p, v in params.items() if p != "self" and v.default is inspect.Parameter.empty]
    assert set(required) <= set(spec["required"]), f"{name}: optional inputs need defaults"


def test_package_imports_without_comfyui():
    assert "comfy" not in sys.modules and "folder_paths" not in sys.modules
    assert len(nodes.NODE_CLASS_MAPPINGS) == 12


def test_root_package_loads_like_comfyui_loads_it():
    """ComfyUI imports the folder with spec_from_file_location under a path-like module name."""
    mod_name = str(REPO).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(mod_name, REPO / "__init__.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    try:
        spec.loader.exec_module(mod)
        assert set(mod.NODE_CLASS_MAPPINGS) == set(nodes.NODE_CLASS_MAPPINGS)
        assert mod.WEB_DIRECTORY is None
        assert set(mod.NODE_DISPLAY_NAME_MAPPINGS) == set(mod.NODE_CLASS_MAPPINGS)
    finally:
        for k in [k for k in sys.modules if k == mod_name or k.startswith(mod_name + ".")]:
            del sys.modules[k]


def test_helpers_parse_text():
    assert parse_reweight("origami", "2") == {"origami": 2.0}
    assert parse_reweight("a, b", "2") == {"a": 2.0, "b": 2.0}
    assert parse_reweight("a b", "2, 0.5") == {"a": 2.0, "b": 0.5}
    assert parse_reweight("", "") == {}
    for words, values in [("a b", "1 2 3"), ("a", "x"), ("", "2"), ("a", "")]:
        with pytest.raises(VP2PInputError, match="reweight"):
            parse_reweight(words, values)
    assert target_lines("a cat\n\n  a dog  \n") == ["a cat", "a dog"]


# ---------------------------------------------------------------------------------------------------------
# the whole chain on tiny models

@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("vp2p_files")
    node_files.set_roots(output=base / "output", models=base / "models")
    yield base
    node_files.set_roots()


@pytest.fixture(scope="module")
def chain(roots):
    """InflateUNet's output -> OneShotTune -> NullTextVideoInvert, run as ComfyUI would."""
    clip = FakeClip()
    model = make_model()
    latent = make_latent()
    latent_before = latent["samples"].clone()
    base_before = unet_state(model)
    with torch.inference_mode():
        tuned, log_text = OneShotTune().tune(model, latent, clip, SRC, 2, 3e-5, 33, False, "fp32", "cache")
        inv = NullTextVideoInvert().invert(tuned, latent, clip, SRC, 4, 7.5, "null_text", 2, 1e-5, "cache")[0]
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
    cached = sorted(p.name.split("-")[0] for p in (roots / "models" / "cache").iterdir())
    assert cached == ["delta", "inversion"]
    with torch.inference_mode():
        again, log_text = OneShotTune().tune(chain.model, chain.latent, chain.clip, SRC, 2, 3e-5, 33, False,
                                             "fp32", "cache")
        inv = NullTextVideoInvert().invert(again, chain.latent, chain.clip, SRC, 4, 7.5, "null_text", 2, 1e-5,
                                           "cache")[0]
    assert log_text.startswith("loaded from cache")
    assert again.delta.fingerprint == chain.tuned.delta.fingerprint
    assert torch.equal(inv.x_T, chain.inv.x_T) and torch.equal(inv.null_embeddings, chain.inv.null_embeddings)
    # another seed is another delta
    with torch.inference_mode():
        other, log2 = OneShotTune().tune(chain.model, chain.latent, chain.clip, SRC, 2, 3e-5, 34, False, "fp32", "")
    assert not log2.startswith("loaded") and other.delta.fingerprint != chain.tuned.delta.fingerprint


def test_inversion_lr_scale_is_used_and_keyed(chain, roots):
    """The optional lr_scale reaches the null-text optimiser and gets its own cache entry."""
    with torch.inference_mode():
        scaled = NullTextVideoInvert().invert(chain.tuned, chain.latent, chain.clip, SRC, 4, 7.5, "null_text", 2,
                                              1e-5, "cache", lr_scale=5.0)[0]
    assert not torch.equal(scaled.null_embeddings, chain.inv.null_embeddings)
    assert torch.equal(scaled.x_T, chain.inv.x_T)  # DDIM inversion itself does not depend on it
    inversions = [q for q in (roots / "models" / "cache").iterdir() if q.name.startswith("inversion")]
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
    with torch.inference_mode():
        edited, source, maps = VideoP2PSampler().sample(chain.tuned, chain.inv, e, 7.5, True, latent=chain.latent)
    assert set(edited) == {"samples"} and tuple(edited["samples"].shape) == (2 * FRAMES, 4, 16, 16)
    assert tuple(source["samples"].shape) == (FRAMES, 4, 16, 16)
    assert torch.isfinite(edited["samples"]).all()
    # null-text + same guidance: the source branch is the inversion's own trajectory, unscaled for LATENT
    assert torch.allclose(source["samples"] * 0.18215, chain.inv.trajectory[-1], atol=1e-5)
    assert isinstance(maps, VP2PMaps) and maps.maps.shape[0] == 3 and maps.maps.shape[-1] == 77
    assert maps.blend_mask is not None and tuple(maps.blend_mask.shape[:2]) == (2, FRAMES)
    assert torch.equal(chain.inv.x_T, latent_x) and torch.equal(e.plan.mapper, plan_mapper)
    assert same_state(unet_state(chain.model), chain.base_before), "sampling left the shared UNet changed"

    with torch.inference_mode():
        grid, mask = AttentionMaps().render(maps, -1, 32)
        grid0, _ = AttentionMaps().render(maps, 0, 32)
    assert grid.dim() == 4 and grid.shape[0] == 1 and grid.shape[-1] == 3
    assert float(grid.min()) >= 0 and float(grid.max()) <= 1
    assert grid.shape[1] == 3 * (32 + 14) and grid.shape[2] == 5 * 32  # 3 prompts x 5 words
    assert grid0.shape == grid.shape
    assert tuple(mask.shape) == (2 * FRAMES, 128, 128)
    with pytest.raises(VP2PInputError, match="frame"):
        AttentionMaps().render(maps, FRAMES, 32)

    vae = FakeVAE()
    with torch.inference_mode():
        images = DecodeFrames().decode(vae, edited, 4)[0]
    assert tuple(images.shape) == (2 * FRAMES, 128, 128, 3)
    assert vae.chunks == [4, 2]
    assert float(images.min()) >= 0 and float(images.max()) <= 1


def test_untuned_model_runs_fast_inversion_and_edit(roots):
    """Tuning is optional: an untuned model inverts (fast mode) and edits."""
    clip, model, latent = FakeClip(), make_model(), make_latent(frames=2)
    with torch.inference_mode():
        inv = NullTextVideoInvert().invert(model, latent, clip, SRC, 3, 7.5, "fast", 1, 1e-5, "")[0]
        e = edit(clip, SRC, TGT, edit_mode="none")
        edited, source, maps = VideoP2PSampler().sample(model, inv, e, 7.5, True)
    assert tuple(edited["samples"].shape) == (2, 4, 16, 16)
    assert inv.null_embeddings is None


def test_save_and_load_delta_and_inversion(chain, roots):
    with torch.inference_mode():
        out = SaveVP2PDelta().save(chain.tuned, "vp2p/ball.delta")
        out_inv = SaveVP2PInversion().save(chain.inv, "vp2p/ball.inversion.safetensors")
    assert out["result"] == ("vp2p/ball.delta.safetensors",)
    assert (roots / "output" / "vp2p" / "ball.delta.safetensors").is_file()
    assert (roots / "output" / "vp2p" / "ball.inversion.safetensors").is_file()
    with torch.inference_mode():
        loaded = LoadVP2PDelta().load(chain.model, "vp2p/ball.delta.safetensors", latent=chain.latent)[0]
        inv = LoadVP2PInversion().load(loaded, out_inv["result"][0], latent=chain.latent)[0]
    assert loaded.fingerprint == chain.tuned.fingerprint
    assert torch.equal(inv.x_T, chain.inv.x_T)
    state = LoadVP2PDelta.IS_CHANGED(filename="vp2p/ball.delta.safetensors")
    assert "ball.delta.safetensors" in state
    # files under models/vp2p win over the output folder
    models_copy = roots / "models" / "vp2p" / "ball.delta.safetensors"
    models_copy.parent.mkdir(parents=True, exist_ok=True)
    models_copy.write_bytes((roots / "output" / "vp2p" / "ball.delta.safetensors").read_bytes())
    assert node_files.load_path("vp2p/ball.delta", "filename") == models_copy
    # the sampler on loaded files gives what it gives on the originals
    e = edit(chain.clip, blend_words="ball")
    with torch.inference_mode():
        a = VideoP2PSampler().sample(chain.tuned, chain.inv, e, 7.5, True)[0]["samples"]
        b = VideoP2PSampler().sample(loaded, inv, e, 7.5, True)[0]["samples"]
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
    monkeypatch.setattr(convert, "make_patcher", lambda unet: None)
    with torch.inference_mode():
        vm = InflateUNet().inflate(object(), "first_prev", "fp32")[0]
    assert isinstance(vm, VP2PModel) and calls["dtype"] == "fp32"
    assert vm.video.schedule.prediction_type == "v_prediction" and vm.latent_scale == 0.13
    assert vm.video.frame_attention == "first_prev" and vm.latent_format == "LATENT_FORMAT"
    assert not any(p.is_inference() for p in vm.video.unet.parameters())
