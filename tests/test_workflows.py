"""Every shipped workflow fits the node definitions: node types exist, links join matching types, widget
values are in range, and each UI-format file has an API-format twin that says the same.

Core node signatures are the table below, read off ComfyUI 0.3.64 (nodes.py, comfy_extras/nodes_video.py,
comfy_extras/nodes_images.py, comfy_extras/nodes_mask.py); tests/integration/test_comfyui.py checks the table
against a running ComfyUI.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from comfy_nodes import NODE_MAP

REPO = Path(__file__).resolve().parents[1]
WF = REPO / "workflows"
UI_FILES = sorted(WF.glob("*.json"))
MAX_RES = 16384
FILES = "FILES"  # a combo listing files of a folder: any name is allowed here

# name -> {"inputs": [(name, type, options, optional)], "outputs": [type], "extra": {widget: n values}}
# type: a socket type, or INT/FLOAT/STRING/BOOLEAN, or "COMBO" with options["choices"].
CORE_SIGNATURES = {
    "CheckpointLoaderSimple": {"inputs": [("ckpt_name", "COMBO", {"choices": FILES}, False)],
                               "outputs": ["MODEL", "CLIP", "VAE"]},
    "LoadVideo": {"inputs": [("file", "COMBO", {"choices": FILES}, False)], "outputs": ["VIDEO"],
                  "extra": {"file": 1}},
    "ImageScale": {"inputs": [("image", "IMAGE", {}, False),
                              ("upscale_method", "COMBO",
                               {"choices": ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]}, False),
                              ("width", "INT", {"min": 0, "max": MAX_RES}, False),
                              ("height", "INT", {"min": 0, "max": MAX_RES}, False),
                              ("crop", "COMBO", {"choices": ["disabled", "center"]}, False)], "outputs": ["IMAGE"]},
    "VAEEncode": {"inputs": [("pixels", "IMAGE", {}, False), ("vae", "VAE", {}, False)], "outputs": ["LATENT"]},
    "CreateVideo": {"inputs": [("images", "IMAGE", {}, False), ("fps", "FLOAT", {"min": 1.0, "max": 120.0}, False),
                               ("audio", "AUDIO", {}, True)], "outputs": ["VIDEO"]},
    "SaveVideo": {"inputs": [("video", "VIDEO", {}, False), ("filename_prefix", "STRING", {}, False),
                             ("format", "COMBO", {"choices": ["auto", "mp4"]}, False),
                             ("codec", "COMBO", {"choices": ["auto", "h264"]}, False)], "outputs": []},
    "PreviewImage": {"inputs": [("images", "IMAGE", {}, False)], "outputs": []},
    "ControlNetLoader": {"inputs": [("control_net_name", "COMBO", {"choices": FILES}, False)],
                         "outputs": ["CONTROL_NET"]},
    "ImageCompositeMasked": {"inputs": [("destination", "IMAGE", {}, False), ("source", "IMAGE", {}, False),
                                        ("x", "INT", {"min": 0, "max": MAX_RES}, False),
                                        ("y", "INT", {"min": 0, "max": MAX_RES}, False),
                                        ("resize_source", "BOOLEAN", {}, False), ("mask", "MASK", {}, True)],
                             "outputs": ["IMAGE"]},
}
VIRTUAL = {"Note", "MarkdownNote"}  # frontend-only nodes: never in the API format
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def our_signature(cls) -> dict:
    spec = cls.INPUT_TYPES()
    inputs = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind, opts = entry[0], dict(entry[1]) if len(entry) > 1 else {}
            if kind == "COMBO":
                opts = dict(opts, choices=opts["options"])
            inputs.append((name, kind, opts, section == "optional"))
    extra = {name: 1 for name, kind, opts, _ in inputs if kind == "INT" and
             (opts.get("control_after_generate") or (name in ("seed", "noise_seed") and
                                                    opts.get("control_after_generate") is not False))}
    return {"inputs": inputs, "outputs": list(cls.RETURN_TYPES), "extra": extra}


SIGNATURES = dict(CORE_SIGNATURES, **{n: our_signature(c) for n, c in NODE_MAP.items()})


def check_value(where: str, kind: str, opts: dict, value) -> None:
    if kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is not an INT"
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} not a FLOAT"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a BOOLEAN"
    elif kind == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a STRING"
    elif kind == "COMBO":
        choices = opts["choices"]
        assert isinstance(value, str), f"{where}: {value!r}"
        if choices != FILES:
            assert value in choices, f"{where}: {value!r} not one of {choices}"
    if kind in ("INT", "FLOAT"):
        if "min" in opts:
            assert value >= opts["min"], f"{where}: {value} below min {opts['min']}"
        if "max" in opts:
            assert value <= opts["max"], f"{where}: {value} above max {opts['max']}"


def ui_to_api(ui: dict) -> dict:
    """What the frontend sends for a UI-format workflow (widget values by name, links as [id, slot])."""
    links = {l[0]: l for l in ui["links"]}
    out = {}
    for node in ui["nodes"]:
        if node["type"] in VIRTUAL:
            continue
        sig = SIGNATURES[node["type"]]
        inputs = {}
        values = list(node.get("widgets_values", []))
        for name, kind, opts, optional in sig["inputs"]:
            if kind in WIDGET_TYPES:
                inputs[name] = values.pop(0)
                del values[:sig.get("extra", {}).get(name, 0)]
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                l = links[entry["link"]]
                inputs[entry["name"]] = [str(l[1]), l[2]]
        out[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return out


def test_workflows_shipped():
    names = {p.stem for p in UI_FILES}
    assert {"video_p2p_word_swap", "video_p2p_refine_reweight", "video_p2p_reedit", "vp2p_structure_depth"} <= names
    for p in UI_FILES:
        assert (WF / "api" / p.name).is_file(), f"{p.name} has no API-format twin in workflows/api/"


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_ui_workflow_consistent(path):
    ui = json.loads(path.read_text())
    assert ui["version"] >= 0.4 and isinstance(ui["nodes"], list) and isinstance(ui["links"], list)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]), "duplicate node ids"
    assert ui["last_node_id"] >= max(nodes) and ui["last_link_id"] >= max((l[0] for l in ui["links"]), default=0)
    link_ids = [l[0] for l in ui["links"]]
    assert len(set(link_ids)) == len(link_ids)
    for l in ui["links"]:
        lid, src, sslot, dst, dslot, typ = l
        s, d = nodes[src], nodes[dst]
        assert s["outputs"][sslot]["type"] == typ, f"link {lid}: source slot is {s['outputs'][sslot]['type']}"
        assert lid in s["outputs"][sslot]["links"], f"link {lid} missing on its source"
        assert d["inputs"][dslot]["link"] == lid, f"link {lid} missing on its target"
        assert d["inputs"][dslot]["type"] == typ, f"link {lid}: {typ} into a {d['inputs'][dslot]['type']} input"
    for node in ui["nodes"]:
        where = f"{path.name} node {node['id']} ({node['type']})"
        if node["type"] in VIRTUAL:
            assert not node.get("inputs") and not node.get("outputs")
            continue
        assert node["type"] in SIGNATURES, f"{where}: unknown node type"
        sig = SIGNATURES[node["type"]]
        sockets = [(n, k, o, opt) for n, k, o, opt in sig["inputs"] if k not in WIDGET_TYPES]
        listed = [e for e in node["inputs"] if "widget" not in e]
        assert [e["name"] for e in listed] == [n for n, *_ in sockets], f"{where}: socket inputs differ"
        for e, (name, kind, _, optional) in zip(listed, sockets):
            assert e["type"] == kind, f"{where}: input {name} is {kind}, the file says {e['type']}"
            if not optional:
                assert e["link"] is not None, f"{where}: required input {name} is not connected"
        assert [o["type"] for o in node["outputs"]] == sig["outputs"], f"{where}: outputs differ"
        for o in node["outputs"]:
            for lid in o["links"] or []:
                assert lid in link_ids, f"{where}: output lists unknown link {lid}"
        widgets = [(n, k, o) for n, k, o, _ in sig["inputs"] if k in WIDGET_TYPES]
        expected = len(widgets) + sum(sig.get("extra", {}).values())
        values = node["widgets_values"]
        assert len(values) == expected, f"{where}: {len(values)} widget values, expected {expected}"
        vals = list(values)
        for name, kind, opts in widgets:
            check_value(f"{where}.{name}", kind, opts, vals.pop(0))
            del vals[:sig.get("extra", {}).get(name, 0)]


@pytest.mark.parametrize("path", UI_FILES, ids=[p.stem for p in UI_FILES])
def test_api_twin_consistent(path):
    api = json.loads((WF / "api" / path.name).read_text())
    for nid, node in api.items():
        where = f"api/{path.name} node {nid} ({node['class_type']})"
        assert node["class_type"] in SIGNATURES, f"{where}: unknown node type"
        sig = {n: (k, o, opt) for n, k, o, opt in SIGNATURES[node["class_type"]]["inputs"]}
        for name, value in node["inputs"].items():
            assert name in sig, f"{where}: unknown input {name}"
            kind, opts, _ = sig[name]
            if isinstance(value, list):
                src, slot = value
                assert src in api, f"{where}.{name}: links to missing node {src}"
                outs = SIGNATURES[api[src]["class_type"]]["outputs"]
                assert slot < len(outs) and outs[slot] == kind, f"{where}.{name}: {outs[slot]} into {kind}"
            else:
                assert kind in WIDGET_TYPES, f"{where}.{name}: a {kind} input needs a link"
                check_value(f"{where}.{name}", kind, opts, value)
        for name, (kind, opts, optional) in sig.items():
            assert optional or name in node["inputs"], f"{where}: required input {name} missing"
    ui = json.loads(path.read_text())
    strip = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
    assert ui_to_api(ui) == strip, f"{path.name} and api/{path.name} differ"


def test_edit_settings_of_the_examples():
    """The three workflows show what they say: a word swap with local blend, refine + reweight, a re-edit."""
    def nodes_of(name):
        return json.loads((WF / "api" / f"{name}.json").read_text()).values()

    swap = [n for n in nodes_of("video_p2p_word_swap") if n["class_type"] == "AttentionEditController"][0]["inputs"]
    assert swap["edit_mode"] == "replace" and swap["blend_words"] and swap["blend_target_words"]
    assert len(swap["source_prompt"].split()) == len(swap["target_prompts"].split())
    ref = [n for n in nodes_of("video_p2p_refine_reweight") if n["class_type"] == "AttentionEditController"][0]
    assert ref["inputs"]["edit_mode"] == "refine" and ref["inputs"]["reweight_words"] == "origami"
    kinds = {n["class_type"] for n in nodes_of("video_p2p_reedit")}
    assert {"LoadVP2PDelta", "LoadVP2PInversion"} <= kinds and "OneShotTune" not in kinds
    saved = {n["class_type"]: n["inputs"]["filename"] for n in nodes_of("video_p2p_word_swap")
             if n["class_type"].startswith("Save") and "filename" in n["inputs"]}
    loaded = {n["class_type"]: n["inputs"]["filename"] for n in nodes_of("video_p2p_reedit")
              if n["class_type"].startswith("Load") and "filename" in n["inputs"]}
    assert saved["SaveVP2PDelta"] == loaded["LoadVP2PDelta"]
    assert saved["SaveVP2PInversion"] == loaded["LoadVP2PInversion"]


def test_workflows_saved_before_gen1_stay_valid():
    """Gen-1's sampler inputs are optional and come after the old widgets: an API prompt without them validates,
    and an older UI file's widget values still land on the same widgets."""
    sig = SIGNATURES["VideoP2PSampler"]["inputs"]
    assert [n for n, k, o, opt in sig if not opt] == ["vp2p_model", "inversion", "edit", "guidance",
                                                      "decoupled_guidance"]
    assert [n for n, k, o, opt in sig if k in WIDGET_TYPES] == ["guidance", "decoupled_guidance", "temporal_guidance",
                                                                 "edit_guidance", "edit_guidance_steps"]
    assert {n: opt for n, k, o, opt in sig}["structure"] is True


def test_structure_depth_workflow():
    """Gen-1's guidance: a depth clip of the same frames and size as the clip, through a depth ControlNet, into
    the sampler's structure input, with temporal guidance on."""
    api = json.loads((WF / "api" / "vp2p_structure_depth.json").read_text())
    by_type = {}
    for nid, n in api.items():
        by_type.setdefault(n["class_type"], []).append(nid)
    sampler = api[by_type["VideoP2PSampler"][0]]["inputs"]
    assert sampler["temporal_guidance"] > 1.0
    sg_id = sampler["structure"][0]
    sg = api[sg_id]
    assert sg["class_type"] == "StructureGuidance" and sampler["structure"][1] == 0
    assert sg["inputs"]["diffusers_controlnet"] == "" and sg["inputs"]["structure_blur"] > 0
    loader = api[sg["inputs"]["control_net"][0]]
    assert loader["class_type"] == "ControlNetLoader" and "depth" in loader["inputs"]["control_net_name"]

    def chain(nid):  # node ids up the IMAGE chain to the loader
        out = []
        while True:
            n = api[nid]
            out.append(nid)
            link = n["inputs"].get("image") or n["inputs"].get("images") or n["inputs"].get("pixels") or \
                n["inputs"].get("video")
            if link is None:
                return out
            nid = link[0]

    depth = [api[i] for i in chain(sg["inputs"]["structure"][0])]
    encode = next(n for n in api.values() if n["class_type"] == "VAEEncode")
    source = [api[i] for i in chain(encode["inputs"]["pixels"][0])]
    assert source[0]["class_type"] == "NormaliseLight"  # the clip is encoded as if evenly lit; the depth as it is
    source = source[1:]
    assert [n["class_type"] for n in depth] == [n["class_type"] for n in source] == \
        ["ImageScale", "VideoP2PVideoFrames", "LoadVideo"]
    for key in ("width", "height", "crop"):
        assert depth[0]["inputs"][key] == source[0]["inputs"][key]
    for key in ("frames", "start_frame", "frame_stride"):
        assert depth[1]["inputs"][key] == source[1]["inputs"][key]
    assert depth[2]["inputs"]["file"] != source[2]["inputs"]["file"]
    # the other workflows keep the plain sampler
    for name in ("video_p2p_word_swap", "video_p2p_refine_reweight", "video_p2p_reedit"):
        other = json.loads((WF / "api" / f"{name}.json").read_text())
        s = next(n for n in other.values() if n["class_type"] == "VideoP2PSampler")["inputs"]
        assert s["temporal_guidance"] == 1.0 and "structure" not in s


def test_every_workflow_edits_the_clip_as_evenly_lit_and_decodes_it_with_its_light():
    """Normalise Light sits between the clip's frames and VAE Encode (where the workflow encodes), and its light goes
    into every Decode Frames, so the decoded edit gets the clip's light back before it is composited over the clip's
    frames; in the re-edit workflow it measures the light of the clip the saved inversion was made from."""
    for path in UI_FILES:
        api = json.loads((WF / "api" / path.name).read_text())
        where = f"api/{path.name}"
        lights = [nid for nid, n in api.items() if n["class_type"] == "NormaliseLight"]
        assert len(lights) == 1, where
        light = api[lights[0]]
        assert api[light["inputs"]["images"][0]]["class_type"] == "ImageScale", where
        for n in api.values():
            if n["class_type"] == "VAEEncode":
                assert n["inputs"]["pixels"] == [lights[0], 0], where
            if n["class_type"] == "DecodeFrames":
                assert n["inputs"]["light"] == [lights[0], 1], where


def test_local_blend_workflows_composite_over_the_source_frames():
    """Every workflow with local blend saves the decoded edit pasted over the clip's frames through BlendMask's
    mask (ComfyUI's ImageCompositeMasked, at 0, 0): destination = the frames the clip was encoded from (or, with no
    encoding, the same chain of clip nodes), source = DecodeFrames' images, mask = BlendMask on the sampler's maps."""
    composited = set()
    for path in UI_FILES:
        api = json.loads((WF / "api" / path.name).read_text())
        edits = [n for n in api.values() if n["class_type"] == "AttentionEditController"]
        if not any(n["inputs"].get("blend_words") for n in edits):
            continue
        where = f"api/{path.name}"
        video = next(n for n in api.values() if n["class_type"] == "CreateVideo")
        comp = api[video["inputs"]["images"][0]]
        assert comp["class_type"] == "ImageCompositeMasked", f"{where}: the saved video is not composited"
        inp = comp["inputs"]
        assert (inp["x"], inp["y"], inp["resize_source"]) == (0, 0, False), where
        decode, mask = api[inp["source"][0]], api[inp["mask"][0]]
        assert decode["class_type"] == "DecodeFrames" and mask["class_type"] == "BlendMask", where
        sampler = api[decode["inputs"]["latent"][0]]
        assert sampler["class_type"] == "VideoP2PSampler" and decode["inputs"]["latent"][1] == 0, where
        assert mask["inputs"]["attention_maps"] == [decode["inputs"]["latent"][0], 2], where
        assert mask["inputs"]["images"] == inp["source"], where
        assert mask["inputs"]["source_images"] == inp["destination"], f"{where}: change_threshold needs the clip"
        assert mask["inputs"]["change_threshold"] > 0, where
        dest = api[inp["destination"][0]]
        assert dest["class_type"] == "ImageScale", f"{where}: the destination is not the clip's frames"
        encode = [n for n in api.values() if n["class_type"] == "VAEEncode"]
        if encode:
            light = api[encode[0]["inputs"]["pixels"][0]]
            assert light["class_type"] == "NormaliseLight", f"{where}: the clip is not encoded as if evenly lit"
            assert light["inputs"]["images"] == inp["destination"], f"{where}: not the frames that were edited"
        loader = api[api[dest["inputs"]["image"][0]]["inputs"]["video"][0]]
        assert loader["class_type"] == "LoadVideo" and loader["inputs"]["file"] == "rabbit.mp4", where
        composited.add(path.stem)
    assert composited >= {"video_p2p_word_swap", "video_p2p_refine_reweight", "video_p2p_reedit",
                          "vp2p_structure_depth"}


def test_every_saved_video_plays_at_the_source_clips_frame_rate():
    """CreateVideo's fps comes from Video Frames of the clip that is edited (the one loaded from rabbit.mp4),
    not a fixed number: a 30-fps clip saved at 8 fps played in slow motion."""
    for path in UI_FILES:
        api = json.loads((WF / "api" / path.name).read_text())
        where = f"api/{path.name}"
        for video in (n for n in api.values() if n["class_type"] == "CreateVideo"):
            src, slot = video["inputs"]["fps"]
            parts = api[src]
            assert parts["class_type"] == "VideoP2PVideoFrames" and slot == 1, where
            assert api[parts["inputs"]["video"][0]]["inputs"]["file"] == "rabbit.mp4", where


def test_files_are_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("make_workflows", WF / "make_workflows.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for rel, text in mod.render().items():
        assert (WF / rel).read_text() == text, f"workflows/{rel} is stale: run python workflows/make_workflows.py"
