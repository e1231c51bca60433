"""Writes the shipped workflows from one description each: UI format (``workflows/*.json``, what ComfyUI's
Templates browser and "Open" load) and its API-format twin (``workflows/api/*.json``, what ``POST /prompt``
takes). Run from the repository root after changing a node's inputs:

    python workflows/make_workflows.py

tests/test_workflows.py checks the files are what this script writes and that they fit the node definitions.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Core nodes used here, as ComfyUI 0.3.64 defines them: (name, type) of each input in order ("W" = a
# widget), optional sockets, output (name, type), extra widget values the frontend stores (upload button), and
# the defaults of widgets a workflow links (the value the widget shows when the link is taken away).
CORE = {
    "CheckpointLoaderSimple": {"inputs": [("ckpt_name", "W")],
                               "outputs": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]},
    "LoadVideo": {"inputs": [("file", "W")], "outputs": [("VIDEO", "VIDEO")], "extra": {"file": ["image"]}},
    "ImageScale": {"inputs": [("image", "IMAGE"), ("upscale_method", "W"), ("width", "W"), ("height", "W"),
                              ("crop", "W")], "outputs": [("IMAGE", "IMAGE")]},
    "VAEEncode": {"inputs": [("pixels", "IMAGE"), ("vae", "VAE")], "outputs": [("LATENT", "LATENT")]},
    "CreateVideo": {"inputs": [("images", "IMAGE"), ("fps", "W"), ("audio", "AUDIO?")],
                    "outputs": [("VIDEO", "VIDEO")], "defaults": {"fps": 30.0}},
    "SaveVideo": {"inputs": [("video", "VIDEO"), ("filename_prefix", "W"), ("format", "W"), ("codec", "W")],
                  "outputs": []},
    "PreviewImage": {"inputs": [("images", "IMAGE")], "outputs": []},
    "ControlNetLoader": {"inputs": [("control_net_name", "W")], "outputs": [("CONTROL_NET", "CONTROL_NET")]},
    "ImageCompositeMasked": {"inputs": [("destination", "IMAGE"), ("source", "IMAGE"), ("x", "W"), ("y", "W"),
                                        ("resize_source", "W"), ("mask", "MASK?")], "outputs": [("IMAGE", "IMAGE")]},
}
WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def our_signature(cls) -> dict:
    """Inputs in order, outputs, and the widget defaults (a workflow states only the values it changes)."""
    spec = cls.INPUT_TYPES()
    inputs, defaults = [], {}
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind, opts = entry[0], entry[1] if len(entry) > 1 else {}
            if kind == "COMBO" or kind in WIDGET_KINDS:
                inputs.append((name, "W"))
                if "default" in opts:
                    defaults[name] = opts["default"]
            else:
                inputs.append((name, kind + ("?" if section == "optional" else "")))
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    return {"inputs": inputs, "outputs": list(zip(names, cls.RETURN_TYPES)), "defaults": defaults}


def signatures() -> dict:
    """CORE and our nodes' signatures; our nodes come from ComfyUI's node API in the tree at COMFYUI_DIR
    (default ../shared/comfyui beside the repository)."""
    sys.path.insert(0, str(REPO))
    comfy = os.environ.get("COMFYUI_DIR") or str(REPO.parent / "shared" / "comfyui")
    sys.path.append(comfy)
    try:
        import comfy_api  # noqa: F401
    except ImportError:
        raise SystemExit(f"make_workflows: no ComfyUI at {comfy} (comfy_api does not import); set COMFYUI_DIR to a "
                         "ComfyUI checkout, whose node API gives our nodes' signatures") from None
    from nodes.extension import NODES
    from nodes.schema import node_map

    sig = dict(CORE)
    sig.update({name: our_signature(cls) for name, cls in node_map(NODES).items()})
    return sig


class Graph:
    """Nodes with widget values by name and links by (source node, output index)."""

    def __init__(self, title: str):
        self.title = title
        self.nodes: list[dict] = []

    def add(self, type_: str, title: str | None = None, pos=(0, 0), **inputs) -> int:
        nid = len(self.nodes) + 1
        self.nodes.append({"id": nid, "type": type_, "title": title, "pos": list(pos), "inputs": inputs})
        return nid

    def find(self, type_: str) -> int | None:
        """The id of the first node of this type (None: none yet)."""
        return next((n["id"] for n in self.nodes if n["type"] == type_), None)

    def connect(self, nid: int, name: str, source: tuple[int, int]) -> None:
        """Link input ``name`` of node ``nid`` to ``source`` (node, output index), replacing its link."""
        self.nodes[nid - 1]["inputs"][name] = source

    def note(self, text: str, pos=(0, 0)) -> None:
        self.nodes.append({"id": len(self.nodes) + 1, "type": "Note", "title": "Read me", "pos": list(pos),
                           "text": text})

    @staticmethod
    def values(n: dict, sig: dict) -> dict:
        """The node's inputs: what the graph sets, the widget defaults for the rest."""
        return {**sig[n["type"]].get("defaults", {}), **n["inputs"]}

    def slots(self, n: dict, sig: dict) -> list[tuple[str, str]]:
        """The node's input slots as the frontend saves them: its sockets in order, then each widget a link
        drives (typed by the output it links to)."""
        s = sig[n["type"]]
        sockets = [(name, kind) for name, kind in s["inputs"] if kind != "W"]
        linked = []
        for name, kind in s["inputs"]:
            v = n["inputs"].get(name)
            if kind == "W" and isinstance(v, tuple):
                linked.append((name, sig[self.nodes[v[0] - 1]["type"]]["outputs"][v[1]][1]))
        return sockets + linked

    def api(self, sig: dict) -> dict:
        out = {}
        for n in self.nodes:
            if n["type"] == "Note":
                continue
            s = sig[n["type"]]
            n = dict(n, inputs=self.values(n, sig))
            inputs = {}
            for name, kind in s["inputs"]:
                if name not in n["inputs"]:
                    continue
                v = n["inputs"][name]
                inputs[name] = [str(v[0]), v[1]] if isinstance(v, tuple) else v
            out[str(n["id"])] = {"class_type": n["type"], "inputs": inputs,
                                 "_meta": {"title": n["title"] or n["type"]}}
        return out

    def ui(self, sig: dict) -> dict:
        links, link_id = [], 0
        in_links: dict[tuple[int, str], int] = {}
        out_links: dict[tuple[int, int], list[int]] = {}
        for n in self.nodes:
            if n["type"] == "Note":
                continue
            for slot, (name, kind) in enumerate(self.slots(n, sig)):
                if name in n["inputs"]:
                    src, idx = n["inputs"][name]
                    link_id += 1
                    typ = sig[self.nodes[src - 1]["type"]]["outputs"][idx][1]
                    links.append([link_id, src, idx, n["id"], slot, typ])
                    in_links[(n["id"], name)] = link_id
                    out_links.setdefault((src, idx), []).append(link_id)
        nodes = []
        order = 0
        for n in self.nodes:
            if n["type"] == "Note":
                nodes.append({"id": n["id"], "type": "Note", "pos": n["pos"], "size": [420, 220], "flags": {},
                              "order": order, "mode": 0, "inputs": [], "outputs": [], "title": n["title"],
                              "properties": {}, "widgets_values": [n["text"]],
                              "color": "#432", "bgcolor": "#653"})
                order += 1
                continue
            s = sig[n["type"]]
            n = dict(n, inputs=self.values(n, sig))
            inputs, widgets = [], []
            for name, kind in s["inputs"]:
                if kind == "W":
                    linked = isinstance(n["inputs"][name], tuple)
                    widgets.append(s["defaults"][name] if linked else n["inputs"][name])
                    widgets += s.get("extra", {}).get(name, [])
            for name, kind in self.slots(n, sig):
                entry = {"name": name, "type": kind.rstrip("?"), "link": in_links.get((n["id"], name))}
                if kind.endswith("?"):
                    entry["shape"] = 7
                if name in dict(s["inputs"]) and dict(s["inputs"])[name] == "W":
                    entry["widget"] = {"name": name}
                inputs.append(entry)
            outputs = [{"name": name, "type": typ, "links": out_links.get((n["id"], i), []), "slot_index": i}
                       for i, (name, typ) in enumerate(s["outputs"])]
            node = {"id": n["id"], "type": n["type"], "pos": n["pos"],
                    "size": [320, 60 + 26 * (len(inputs) + len(widgets) + len(outputs))], "flags": {},
                    "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                    "properties": {"Node name for S&R": n["type"]}, "widgets_values": widgets}
            if n["title"]:
                node["title"] = n["title"]
            nodes.append(node)
            order += 1
        return {"last_node_id": len(self.nodes), "last_link_id": link_id, "nodes": nodes, "links": links,
                "groups": [], "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [40, 40]}}, "version": 0.4}


SOURCE = "a rabbit is jumping on the grass"
COL = [0, 380, 760, 1140, 1520, 1900]


def clip_frames(g: Graph, frames: int = 8, size: int = 512) -> int:
    """Video -> its first `frames` frames (decoded no further) at size x size (the ImageScale node)."""
    video = g.add("LoadVideo", "Load the source clip (put it in ComfyUI/input)", pos=(COL[0], 220),
                  file="rabbit.mp4")
    first = g.add("VideoP2PVideoFrames", f"First {frames} frames", pos=(COL[1], 220), video=(video, 0),
                  frames=frames)
    return g.add("ImageScale", "Resize to 512x512", pos=(COL[1], 420), image=(first, 0),
                 upscale_method="lanczos", width=size, height=size, crop="center")


def clip_input(g: Graph, frames: int = 8, size: int = 512):
    """Checkpoint + video -> first `frames` frames at size x size -> latents; also returns the frames."""
    ckpt = g.add("CheckpointLoaderSimple", pos=(COL[0], 0), ckpt_name="v1-5-pruned-emaonly.safetensors")
    scaled = clip_frames(g, frames, size)
    latent = g.add("VAEEncode", pos=(COL[1], 640), pixels=(scaled, 0), vae=(ckpt, 2))
    return ckpt, latent, scaled


def tune_and_invert(g: Graph, ckpt: int, latent: int, context: int | None = None):
    extra = {"context": (context, 0)} if context is not None else {}
    vm = g.add("InflateUNet", pos=(COL[2], 0), model=(ckpt, 0))
    tuned = g.add("OneShotTune", pos=(COL[2], 180), vp2p_model=(vm, 0), latent=(latent, 0), clip=(ckpt, 1),
                  source_prompt=SOURCE, **extra)
    inv = g.add("NullTextVideoInvert", pos=(COL[2], 560), vp2p_model=(tuned, 0), latent=(latent, 0),
                clip=(ckpt, 1), source_prompt=SOURCE, **extra)
    return tuned, inv


def edit_node(g: Graph, ckpt: int, target: str, mode: str, blend: str = "", blend_target: str = "",
              reweight: str = "", values: str = "") -> int:
    return g.add("AttentionEditController", pos=(COL[3], 0), clip=(ckpt, 1), source_prompt=SOURCE,
                 target_prompts=target, edit_mode=mode, blend_words=blend, blend_target_words=blend_target,
                 reweight_words=reweight, reweight_values=values)


def sample_and_save(g: Graph, ckpt: int, tuned: int, inv: int, edit: int, prefix: str, latent: int | None,
                    structure: int | None = None, context: int | None = None, **sampler_widgets):
    extra = {"latent": (latent, 0)} if latent is not None else {}
    if structure is not None:
        extra["structure"] = (structure, 0)
    if context is not None:
        extra["context"] = (context, 0)
    sampler = g.add("VideoP2PSampler", pos=(COL[4], 0), vp2p_model=(tuned, 0), inversion=(inv, 0),
                    edit=(edit, 0), **sampler_widgets, **extra)
    frames = g.add("DecodeFrames", pos=(COL[4], 260), vae=(ckpt, 2), latent=(sampler, 0))
    # at the source clip's own frame rate (Video Frames' fps): the edit plays as fast as the clip (a graph that
    # loads its clip later links it then)
    parts = g.find("VideoP2PVideoFrames")
    video = g.add("CreateVideo", pos=(COL[5], 0), images=(frames, 0), fps=(parts, 1) if parts else 30.0)
    g.add("SaveVideo", pos=(COL[5], 160), video=(video, 0), filename_prefix=f"video/{prefix}", format="auto",
          codec="auto")
    maps = g.add("AttentionMaps", pos=(COL[4], 440), attention_maps=(sampler, 2))
    g.add("PreviewImage", "Per-word attention (rows: source, target)", pos=(COL[5], 560), images=(maps, 0))
    return sampler, frames, video


def composite(g: Graph, sampler: int, frames: int, video: int, source_frames: int) -> int:
    """The decoded edit over the source frames through the local-blend mask, into the saved video: outside the
    (dilated) mask the video has the clip's own pixels, not their VAE round trip. Added after every other node,
    so the nodes of workflows saved before keep their ids. Blend Mask's change_threshold and refine_radius are the
    small world's (vp2p_world/settings.py, chosen on held-out clips; not measured on SD footage: 0 pastes the whole
    mask, and keeps the attention grid's blocks). Its occluder_threshold stays 0, off: its model of one colour per
    object suits the small world's objects, while on footage an object's other colours would keep the source's."""
    from vp2p_core import CompositeOptions
    from vp2p_world.settings import WORLD_DEFAULTS

    mask = g.add("BlendMask", "Local-blend mask at the frames' size", pos=(COL[4], 660),
                 attention_maps=(sampler, 2), images=(frames, 0), source_images=(source_frames, 0),
                 change_threshold=WORLD_DEFAULTS[CompositeOptions]["change_threshold"],
                 refine_radius=WORLD_DEFAULTS[CompositeOptions]["refine_radius"])
    comp = g.add("ImageCompositeMasked", "Edit over the source frames", pos=(COL[4], 880),
                 destination=(source_frames, 0), source=(frames, 0), x=0, y=0, resize_source=False, mask=(mask, 0))
    g.connect(video, "images", (comp, 0))
    return comp


def normalise_light(g: Graph, scaled: int, frames: int, latent: int | None) -> int:
    """Normalise Light between the clip's frames and VAE Encode, its light into Decode Frames: the clip is edited
    as if evenly lit and gets its own light back when decoded. Added last, so earlier nodes keep their ids."""
    light = g.add("NormaliseLight", "The clip as if evenly lit", pos=(COL[1], 1240), images=(scaled, 0))
    if latent is not None:
        g.connect(latent, "pixels", (light, 0))
    g.connect(frames, "light", (light, 1))
    return light


def word_swap() -> Graph:
    g = Graph("Video-P2P word swap with local blend")
    g.note("Video-P2P word swap: 'rabbit' -> 'cat', only the rabbit's region changes (local blend).\n\n"
           "1. Put an SD 1.5 checkpoint in models/checkpoints and your clip in input/. Video Frames takes its first 8 "
           "frames (start_frame and frame_stride pick others) and decodes no further.\n"
           "2. Queue. Tuning (500 steps) and null-text inversion take most of the time; both are cached in "
           "models/vp2p/vp2p_cache, and ComfyUI re-runs only the edit when you change the target prompt.\n"
           "3. The tuned delta and the inversion are also saved to output/vp2p/ for the re-edit workflow.\n"
           "4. Blend Mask and Image Composite Masked paste the edit over the clip's frames: outside the local-blend "
           "mask (grown by mask_dilation, softened by feather) the video keeps the clip's own pixels, and inside "
           "it so do the pixels the edit hardly changed (change_threshold).\n"
           "5. Normalise Light takes a change of light over the clip (exposure, white balance) out of its frames "
           "before VAE Encode, and Decode Frames puts it back: in the small world, one-shot tuning on a clip whose "
           "light drifts or flickers garbled the edit. A cut reads as light too, and in part a zoom or a pan with "
           "strong parallax onto a much brighter or darker scene: bypass the node for such clips, and for "
           "inversions saved before it was in this workflow.\n\n"
           "Blend words must be words of the prompts; the Attention Maps preview shows each word's region.",
           pos=(COL[0], -300))
    ckpt, latent, scaled = clip_input(g)
    tuned, inv = tune_and_invert(g, ckpt, latent)
    edit = edit_node(g, ckpt, "a cat is jumping on the grass", "replace", "rabbit", "cat")
    outputs = sample_and_save(g, ckpt, tuned, inv, edit, "vp2p_word_swap", latent)
    g.add("SaveVP2PDelta", pos=(COL[3], 520), vp2p_model=(tuned, 0), filename="vp2p/rabbit.delta.safetensors")
    g.add("SaveVP2PInversion", pos=(COL[3], 660), inversion=(inv, 0),
          filename="vp2p/rabbit.inversion.safetensors")
    composite(g, *outputs, scaled)
    normalise_light(g, scaled, outputs[1], latent)
    return g


def refine_reweight() -> Graph:
    g = Graph("Video-P2P refine + reweight")
    g.note("Video-P2P refinement with reweighting: 'a rabbit' -> 'an origami rabbit', the word 'origami' "
           "weighted x2.\n\nRefine aligns the prompts token by token, so words can be added; reweight_words / "
           "reweight_values scale a word's attention (below 1 weakens it). Local blend on 'rabbit' keeps the "
           "background, and the edit is pasted over the clip's frames through its mask (Blend Mask, Image "
           "Composite Masked).\nWith the same clip and settings as the word-swap workflow, tuning and inversion "
           "load from the cache.", pos=(COL[0], -300))
    ckpt, latent, scaled = clip_input(g)
    tuned, inv = tune_and_invert(g, ckpt, latent)
    edit = edit_node(g, ckpt, "an origami rabbit is jumping on the grass", "refine", "rabbit", "rabbit",
                     "origami", "2")
    outputs = sample_and_save(g, ckpt, tuned, inv, edit, "vp2p_refine", latent)
    composite(g, *outputs, scaled)
    normalise_light(g, scaled, outputs[1], latent)
    return g


def reedit() -> Graph:
    g = Graph("Video-P2P re-edit from a saved delta and inversion")
    g.note("Re-edit without tuning or inverting again: loads the delta and the inversion the word-swap "
           "workflow saved to output/vp2p/. Use the same checkpoint (and LoRAs): a file made for another "
           "model, or for a clip of another length, is refused. The clip itself is loaded too: its frames are "
           "kept outside the edit's local-blend mask, and its latents tell Load Inversion whether the inversion "
           "was made from this clip (one made from another clip is refused). Bypass Normalise Light here if it "
           "was bypassed when the inversion was made.", pos=(COL[0], -300))
    ckpt = g.add("CheckpointLoaderSimple", pos=(COL[0], 0), ckpt_name="v1-5-pruned-emaonly.safetensors")
    vm = g.add("InflateUNet", pos=(COL[1], 0), model=(ckpt, 0))
    tuned = g.add("LoadVP2PDelta", pos=(COL[2], 0), vp2p_model=(vm, 0), filename="vp2p/rabbit.delta.safetensors")
    inv = g.add("LoadVP2PInversion", pos=(COL[2], 200), vp2p_model=(tuned, 0),
                filename="vp2p/rabbit.inversion.safetensors")
    edit = edit_node(g, ckpt, "a tiger is jumping on the grass", "replace", "rabbit", "tiger")
    outputs = sample_and_save(g, ckpt, tuned, inv, edit, "vp2p_reedit", None)
    scaled = clip_frames(g)  # the clip's frames, for the pixels outside the edit, and its frame rate
    g.connect(outputs[2], "fps", (g.find("VideoP2PVideoFrames"), 1))
    composite(g, *outputs, scaled)
    light = normalise_light(g, scaled, outputs[1], None)  # the light the saved inversion's clip was encoded without
    # the clip as the inversion saw it (evenly lit), encoded only to check that the inversion is this clip's
    latent = g.add("VAEEncode", "The clip's latents, to check the inversion", pos=(COL[1], 1440), pixels=(light, 0),
                   vae=(ckpt, 2))
    g.connect(inv, "latent", (latent, 0))
    return g


def structure_depth() -> Graph:
    g = Graph("Video-P2P with Gen-1 structure and temporal guidance")
    g.note("Video-P2P with Gen-1's guidance: 'rabbit' -> 'fox', steered by the clip's depth through a depth "
           "ControlNet.\n\n"
           "1. Put an SD 1.5 checkpoint in models/checkpoints, a depth ControlNet for SD 1.5 (e.g. "
           "control_v11f1p_sd15_depth.safetensors) in models/controlnet, your clip and its depth clip (same frames, "
           "white = near) in input/. Any depth node pack's output can replace the depth clip loader: connect its "
           "IMAGE to Structure Guidance's structure input.\n"
           "2. structure_blur (Gen-1's t_s): 0 keeps the rabbit's exact outline; 2-4 keeps only its coarse layout, so "
           "the fox may change shape. The structure preview shows what the ControlNet sees.\n"
           "3. temporal_guidance (Gen-1's w_t) 1.5 smooths flicker between frames at one extra UNet pass per step; "
           "1 turns it off.\n"
           "Tuning and inversion are the same as in the word-swap workflow and load from its cache; the edit is "
           "pasted over the clip's frames through its local-blend mask.",
           pos=(COL[0], -300))
    frames = 8
    ckpt, latent, scaled = clip_input(g, frames=frames)
    depth_video = g.add("LoadVideo", "Load the depth clip (white = near)", pos=(COL[0], 820), file="rabbit_depth.mp4")
    depth_first = g.add("VideoP2PVideoFrames", f"First {frames} depth frames", pos=(COL[1], 820),
                        video=(depth_video, 0), frames=frames)
    depth = g.add("ImageScale", "Depth at the clip's size", pos=(COL[1], 1020), image=(depth_first, 0),
                  upscale_method="bilinear", width=512, height=512, crop="center")
    cnet = g.add("ControlNetLoader", pos=(COL[2], 820), control_net_name="control_v11f1p_sd15_depth.safetensors")
    structure = g.add("StructureGuidance", pos=(COL[3], 520), structure=(depth, 0), structure_blur=2.0,
                      control_net=(cnet, 0))
    g.add("PreviewImage", "Structure as the ControlNet sees it", pos=(COL[3], 820), images=(structure, 1))
    tuned, inv = tune_and_invert(g, ckpt, latent)
    edit = edit_node(g, ckpt, "a fox is jumping on the grass", "replace", "rabbit", "fox")
    outputs = sample_and_save(g, ckpt, tuned, inv, edit, "vp2p_structure_depth", latent, temporal_guidance=1.5,
                              structure=structure)
    composite(g, *outputs, scaled)
    normalise_light(g, scaled, outputs[1], latent)
    return g


def long_clip() -> Graph:
    g = Graph("Video-P2P on a long clip (context windows)")
    g.note("Video-P2P word swap on 48 frames of the clip: 'rabbit' -> 'cat'.\n\n"
           "Context Windows (Video-P2P) lets tuning, inversion and the sampler see the clip 16 frames at a time "
           "(ComfyUI's ContextWindowsManual settings); every window also sees the clip's first frame, so all "
           "windows follow one frame, and overlapping windows are blended (fuse_method). Time per frame and "
           "memory stay those of a 16-frame clip. Connect the same Context Windows node to all three.\n"
           "Raise Video Frames' frames for more (VAE Encode and Decode Frames work in chunks).",
           pos=(COL[0], -300))
    ckpt, latent, scaled = clip_input(g, frames=48)
    context = g.add("VideoP2PContextWindows", pos=(COL[1], 900), context_length=16, context_overlap=4)
    tuned, inv = tune_and_invert(g, ckpt, latent, context=context)
    edit = edit_node(g, ckpt, "a cat is jumping on the grass", "replace", "rabbit", "cat")
    outputs = sample_and_save(g, ckpt, tuned, inv, edit, "vp2p_long_clip", latent, context=context)
    composite(g, *outputs, scaled)
    normalise_light(g, scaled, outputs[1], latent)
    return g


WORKFLOWS = {"video_p2p_word_swap": word_swap, "video_p2p_refine_reweight": refine_reweight,
             "video_p2p_reedit": reedit, "vp2p_structure_depth": structure_depth,
             "video_p2p_long_clip": long_clip}


def render() -> dict[str, str]:
    """{relative path: file text} of every workflow file."""
    sig = signatures()
    out = {}
    for name, make in WORKFLOWS.items():
        g = make()
        out[f"{name}.json"] = json.dumps(g.ui(sig), indent=1) + "\n"
        out[f"api/{name}.json"] = json.dumps(g.api(sig), indent=1) + "\n"
    return out


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Write the shipped workflows (UI and API format) from their "
                                            "descriptions.")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs from what "
                                                         "would be written")
    p.add_argument("--out", default=str(HERE), help="folder to write into (default: workflows/ of this repository)")
    a = p.parse_args(argv)
    out = Path(a.out)
    files = render()  # every file is made before any is written
    if a.check:
        stale = [rel for rel, text in files.items() if not (out / rel).is_file() or (out / rel).read_text() != text]
        for rel in stale:
            print("differs:", rel)
        return 1 if stale else 0
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # a file is either the old one or the new one, never half-written
        print("wrote", rel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
