"""Our nodes inside a real ComfyUI server: the package loads, every node is listed in /object_info, and every
shipped API workflow runs to the end, with its outputs checked.

Runs when COMFYUI_DIR points at a ComfyUI source tree (python: COMFYUI_PYTHON, else
$COMFYUI_DIR/../comfyvenv/bin/python, else this interpreter); `.ci/run` sets all of it up. Nothing is written
into the tree (checked at the end): the server gets a throwaway --base-directory whose custom_nodes/ links to
this repository, a small random SD1.5-format checkpoint (make_checkpoint.py), a ControlNet for it
(make_controlnet.py) and a 12-frame clip; Python's bytecode goes to a folder of its own (PYTHONPYCACHEPREFIX).

The workflows keep their shipped settings (gradient checkpointing on, fp32, null-text inversion, local blend,
guidance 7.5, ...); only their size shrinks: 4 frames at 64x64, 2 tuning steps, 5 inversion steps (2 null-text
iterations each). Each run saves, besides what the workflow saves, the decoded frames, the sampler's edited and
source latents and the local-blend mask, and the test checks their contents. It takes minutes on a 2-core CPU:
the small checkpoint keeps SD's 320 channels.

    COMFYUI_DIR=<ComfyUI tree> COMFYUI_PYTHON=<its venv>/bin/python .venv/bin/python -m pytest -q -s tests/integration
"""
from __future__ import annotations

import ast
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "")

if not COMFYUI_DIR:
    pytest.skip("ComfyUI integration: set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON) to run it",
                allow_module_level=True)

CKPT = "vp2p_small_sd15.safetensors"
CNET = "vp2p_small_sd15_controlnet.safetensors"
CLIP = "vp2p_clip.mp4"
FRAMES, SIZE = 4, 64                  # the test size of every workflow (shipped: 8 frames at 512x512)
TUNE_STEPS, INVERT_STEPS, INNER_STEPS = 2, 5, 2
START_TIMEOUT = 180
RUN_TIMEOUT = 600

# Our nodes as the server must list them: id -> (required inputs, optional inputs, output types, output node).
# Saved workflows refer to nodes by these ids and input names, so they are fixed whatever nodes/ looks like inside.
OUR_NODES = {
    "VideoP2PVideoFrames": (["video", "frames", "start_frame", "frame_stride"], [], ["IMAGE", "FLOAT"], False),
    "NormaliseLight": (["images"], [], ["IMAGE", "VP2P_LIGHT"], False),
    "InflateUNet": (["model", "frame_attention", "weight_dtype", "group_norm"], [], ["VP2P_MODEL"], False),
    "VideoP2PContextWindows": (["context_length", "context_overlap", "context_schedule", "context_stride",
                                "closed_loop", "fuse_method"], [], ["VP2P_CONTEXT"], False),
    "OneShotTune": (["vp2p_model", "latent", "clip", "source_prompt", "steps", "learning_rate", "seed",
                     "gradient_checkpointing", "precision", "cache_dir"], ["context"], ["VP2P_MODEL", "STRING"],
                    False),
    "NullTextVideoInvert": (["vp2p_model", "latent", "clip", "source_prompt", "steps", "guidance", "mode",
                             "inner_steps", "early_stop", "cache_dir"],
                            ["lr_scale", "early_stop_ratio", "null_text_checkpointing", "context"],
                            ["VP2P_INVERSION"],
                            False),
    "AttentionEditController": (["clip", "source_prompt", "target_prompts", "edit_mode", "cross_replace",
                                 "self_replace", "self_replace_on", "blend_words", "blend_target_words",
                                 "reweight_words", "reweight_values", "mask_threshold", "blend_start",
                                 "blend_dilation", "blend_smoothing", "blend_region", "blend_from"], [], ["VP2P_EDIT"],
                                False),
    "VideoP2PSampler": (["vp2p_model", "inversion", "edit", "guidance", "decoupled_guidance"],
                        ["latent", "temporal_guidance", "edit_guidance", "edit_guidance_steps", "structure", "context"],
                        ["LATENT", "LATENT", "VP2P_MAPS"],
                        False),
    "StructureGuidance": (["structure", "structure_blur", "strength", "start_percent", "end_percent"],
                          ["control_net", "diffusers_controlnet"], ["VP2P_STRUCTURE", "IMAGE"], False),
    "DecodeFrames": (["vae", "latent", "frames_per_chunk"], ["light"], ["IMAGE"], False),
    "AttentionMaps": (["attention_maps", "frame", "cell_size"], [], ["IMAGE", "MASK"], False),
    "BlendMask": (["attention_maps", "images", "mask_dilation", "feather", "change_threshold", "refine_radius",
                   "occluder_threshold"], ["source_images", "recolour_margin"], ["MASK"], False),
    "SaveVP2PDelta": (["vp2p_model", "filename"], [], ["STRING"], True),
    "LoadVP2PDelta": (["vp2p_model", "filename"], ["latent"], ["VP2P_MODEL"], False),
    "SaveVP2PInversion": (["inversion", "filename"], [], ["STRING"], True),
    "LoadVP2PInversion": (["vp2p_model", "filename"], ["latent"], ["VP2P_INVERSION"], False),
}

# Every file of workflows/api/ and the test that runs it (test_every_shipped_workflow_is_run keeps this complete).
WORKFLOW_TESTS = {
    "video_p2p_word_swap": "test_word_swap_workflow",
    "video_p2p_refine_reweight": "test_refine_reweight_workflow",
    "video_p2p_reedit": "test_reedit_workflow_from_saved_files",
    "vp2p_structure_depth": "test_structure_depth_workflow",
    "video_p2p_long_clip": "test_long_clip_workflow",
}
LONG_FRAMES, LONG_CONTEXT, LONG_OVERLAP = 10, 4, 1  # the long-clip workflow at test size: windows 0-3, 3-6, 6-9


def comfy_python() -> str:
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    venv = Path(COMFYUI_DIR).resolve().parent / "comfyvenv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def comfy_version() -> str:
    text = (Path(COMFYUI_DIR) / "comfyui_version.py").read_text()
    return text.split("__version__")[1].split('"')[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data=None, timeout: float = 30):
    req = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{url}: HTTP {e.code}: {e.read().decode()[:3000]}") from None
    return json.loads(body) if body else None


def tree_state(root: str) -> dict:
    """Every path under root with its type, size and modification time: to check nothing was written there."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            state[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return state


def core_signature_table() -> dict:
    """tests/test_workflows.py's CORE_SIGNATURES, read from its source (without importing it or our nodes)."""
    path = REPO / "tests" / "test_workflows.py"
    ns: dict = {}
    for stmt in ast.parse(path.read_text()).body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id in ("FILES", "MAX_RES",
                                                                                    "CORE_SIGNATURES")
                                                for t in stmt.targets):
            exec(compile(ast.Module(body=[stmt], type_ignores=[]), str(path), "exec"), ns)
    return ns["CORE_SIGNATURES"]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    t0 = time.perf_counter()
    py = comfy_python()
    tree_before = tree_state(COMFYUI_DIR)
    base = tmp_path_factory.mktemp("comfy_base")
    for d in ("custom_nodes", "models/checkpoints", "models/controlnet", "input", "output", "temp", "user"):
        (base / d).mkdir(parents=True, exist_ok=True)
    os.symlink(REPO, base / "custom_nodes" / "vp2p")
    env = dict(os.environ, COMFYUI_DIR=COMFYUI_DIR, PYTHONUNBUFFERED="1")
    env.setdefault("PYTHONPYCACHEPREFIX", str(base / "pycache"))  # no __pycache__ inside the tree
    subprocess.run([py, str(HERE / "make_checkpoint.py"), str(base / "models" / "checkpoints" / CKPT), "--seed", "0"],
                   check=True, env=env, capture_output=True, timeout=600)
    subprocess.run([py, str(HERE / "make_controlnet.py"), str(base / "models" / "checkpoints" / CKPT),
                    str(base / "models" / "controlnet" / CNET), "--seed", "0"],
                   check=True, env=env, capture_output=True, timeout=600)
    subprocess.run([py, str(HERE / "make_clip.py"), str(base / "input" / CLIP), str(LONG_FRAMES + 2),
                    str(SIZE)], check=True,
                   env=env, capture_output=True, timeout=120)
    port = free_port()
    log_path = base / "comfyui.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([py, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--base-directory", str(base), "--database-url", "sqlite:///:memory:",
                             "--preview-method", "latent2rgb", "--disable-auto-launch"],
                            cwd=COMFYUI_DIR, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"ComfyUI exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
        try:
            http(url + "/system_stats", timeout=5)
            break
        except (urllib.error.URLError, ConnectionError, OSError, AssertionError):
            if time.time() > deadline:
                proc.kill()
                raise AssertionError(f"ComfyUI did not start in {START_TIMEOUT}s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
    setup_s = time.perf_counter() - t0
    info = SimpleNamespace(url=url, base=base, log=log_path, version=comfy_version(), python=py, env=env,
                           setup_s=setup_s)
    try:
        yield info
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        print(f"\nComfyUI {info.version} integration: setup (checkpoint, clip, server start) {setup_s:.1f}s, "
              f"total {time.perf_counter() - t0:.1f}s; server log {log_path}")
        after = tree_state(COMFYUI_DIR)
        changed = sorted(k for k in set(tree_before) | set(after) if tree_before.get(k) != after.get(k))
        assert not changed, f"the run wrote into the ComfyUI tree {COMFYUI_DIR}: {changed[:20]}"


def run_prompt(comfy, prompt: dict, timeout: float = RUN_TIMEOUT) -> dict:
    r = http(comfy.url + "/prompt", {"prompt": prompt, "client_id": "vp2p-test"})
    assert not r.get("node_errors"), r
    pid = r["prompt_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        h = http(f"{comfy.url}/history/{pid}")
        if pid in h and h[pid].get("status", {}).get("completed") is not None:
            if h[pid]["status"]["status_str"] in ("success", "error"):
                return h[pid]
        time.sleep(0.5)
    raise AssertionError(f"prompt {pid} did not finish in {timeout}s:\n{comfy.log.read_text()[-4000:]}")


def messages(entry: dict, kind: str) -> list:
    return [m[1] for m in entry["status"]["messages"] if m[0] == kind]


def node_id(api: dict, class_type: str) -> str:
    return next(k for k, v in api.items() if v["class_type"] == class_type)


def shipped(name: str) -> dict:
    return json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())


def small_prompt(name: str, prefix: str, frames: int = FRAMES) -> dict:
    """The shipped API workflow at test size (frames, frame size, steps; every other setting as shipped), plus
    output nodes that save the decoded frames (900), the sampler's edited (901) and source (902) latents and the
    local-blend mask (904)."""
    api = copy.deepcopy(shipped(name))
    for node in api.values():
        ct, inp = node["class_type"], node["inputs"]
        if ct == "CheckpointLoaderSimple":
            inp["ckpt_name"] = CKPT
        elif ct == "LoadVideo":
            inp["file"] = CLIP  # the structure workflow's depth clip too: any clip of the same frames works
        elif ct == "ControlNetLoader":
            inp["control_net_name"] = CNET
        elif ct == "VideoP2PVideoFrames":
            inp["frames"] = frames
        elif ct == "ImageScale":
            inp["width"] = inp["height"] = SIZE
        elif ct == "OneShotTune":
            inp["steps"] = TUNE_STEPS
        elif ct == "NullTextVideoInvert":
            inp["steps"], inp["inner_steps"] = INVERT_STEPS, INNER_STEPS
        elif ct == "SaveVideo":
            inp["filename_prefix"] = f"video/{prefix}"
    sampler, decode = node_id(api, "VideoP2PSampler"), node_id(api, "DecodeFrames")
    assert api[decode]["inputs"]["latent"] == [sampler, 0], "DecodeFrames decodes the sampler's edited frames"
    maps = next(k for k, v in api.items() if v["class_type"] == "AttentionMaps"
                and v["inputs"]["attention_maps"] == [sampler, 2])
    api["900"] = {"class_type": "SaveImage", "inputs": {"images": [decode, 0], "filename_prefix": prefix}}
    api["901"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0],
                                                         "filename_prefix": f"latents/{prefix}_edited"}}
    api["902"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 1],
                                                         "filename_prefix": f"latents/{prefix}_source"}}
    api["903"] = {"class_type": "MaskToImage", "inputs": {"mask": [maps, 1]}}
    api["904"] = {"class_type": "SaveImage", "inputs": {"images": ["903", 0], "filename_prefix": f"masks/{prefix}"}}
    return api


def output_path(comfy, item: dict) -> Path:
    assert item["type"] == "output", item
    return comfy.base / "output" / item["subfolder"] / item["filename"]


def load_images(comfy, items: list):
    import numpy as np
    from PIL import Image

    out = []
    for item in items:
        with Image.open(output_path(comfy, item)) as img:
            out.append(np.asarray(img.convert("RGB")))
    return out


def load_latent(comfy, items: list):
    from safetensors.torch import load_file

    assert len(items) == 1, items
    return load_file(str(output_path(comfy, items[0])))["latent_tensor"]


def video_info(comfy, path: Path) -> tuple:
    """(frames, width, height) of a saved video, read with PyAV in ComfyUI's python."""
    code = ("import av, json, sys\nwith av.open(sys.argv[1]) as c:\n    f = list(c.decode(video=0))\n"
            "print(json.dumps([len(f), f[0].width, f[0].height]))")
    r = subprocess.run([comfy.python, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                       env=comfy.env)
    assert r.returncode == 0, r.stderr[-2000:]
    return tuple(json.loads(r.stdout.strip().splitlines()[-1]))


def check_run(comfy, api: dict, entry: dict, targets: int = 1, frames: int = FRAMES) -> SimpleNamespace:
    """A run of small_prompt's graph finished, and what it saved has the right count, size and finite values.
    Returns the decoded frames, the edited and source latents and the local-blend mask (at latent size)."""
    import torch

    assert entry["status"]["status_str"] == "success", messages(entry, "execution_error")
    out = entry["outputs"]
    h = w = SIZE // 8
    n = frames
    frames = load_images(comfy, out["900"]["images"])
    assert len(frames) == n * targets and all(f.shape == (SIZE, SIZE, 3) for f in frames)
    edited, source = load_latent(comfy, out["901"]["latents"]), load_latent(comfy, out["902"]["latents"])
    assert tuple(edited.shape) == (n * targets, 4, h, w) and tuple(source.shape) == (n, 4, h, w)
    assert torch.isfinite(edited).all() and torch.isfinite(source).all(), "the sampler gave NaN or inf latents"
    assert edited.abs().amax() > 0 and source.abs().amax() > 0
    masks = load_images(comfy, out["904"]["images"])
    assert len(masks) == n * targets and all(m.shape == (SIZE, SIZE, 3) for m in masks)
    mask = torch.stack([torch.from_numpy(m[::8, ::8, 0].copy()) for m in masks])
    assert set(mask.unique().tolist()) <= {0, 255}, "the local-blend mask is not 0/1"
    video = out[node_id(api, "SaveVideo")]["images"]
    assert len(video) == 1 and output_path(comfy, video[0]).stat().st_size > 0
    assert video_info(comfy, output_path(comfy, video[0])) == (n * targets, SIZE, SIZE)
    return SimpleNamespace(frames=frames, edited=edited, source=source, mask=mask > 127, entry=entry)


def check_local_blend(run: SimpleNamespace, partial: bool = False) -> None:
    """Local blend: outside the blend mask the edited latents are exactly the source branch's (the sampler's last
    step puts the source there); inside it the edit changes them. Exact where the mask handed on is the blend (an
    outline blend, or a grown one that covers the clip). partial: the mask must leave part of the clip out
    (the small random model attends almost evenly, so at the shipped mask_threshold 0.3 its mask covers all of its
    4x4 blend grid; mask_threshold 0.99 leaves part of it out)."""
    targets = run.edited.shape[0] // run.source.shape[0]
    diff = (run.edited - run.source.repeat(targets, 1, 1, 1)).abs().amax(dim=1)  # [targets*F, h, w]
    inside = run.mask
    assert inside.any(), "the local-blend mask is empty: nothing was edited"
    if partial:
        assert not inside.all(), "the local-blend mask covers the whole clip: nothing to check outside it"
    assert (diff[~inside] == 0).all(), "outside the blend mask the edited frames differ from the source"
    assert (diff[inside] > 0).float().mean() > 0.9, "inside the blend mask the edit left the source unchanged"


def same(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


# ------------------------------------------------------------------------------------------------------------

def test_every_shipped_workflow_is_run():
    """Every file of workflows/api/ has a test below that runs it: a new workflow cannot go unchecked."""
    files = sorted(p.stem for p in (REPO / "workflows" / "api").glob("*.json"))
    assert files == sorted(WORKFLOW_TESTS), f"workflows/api has {files}; WORKFLOW_TESTS names {sorted(WORKFLOW_TESTS)}"
    for test in WORKFLOW_TESTS.values():
        assert callable(globals().get(test)), test
    for name in files:  # and each runs the shipped settings that matter: gradient checkpointing as shipped (on)
        api = shipped(name)
        for node in api.values():
            if node["class_type"] == "OneShotTune":
                assert node["inputs"]["gradient_checkpointing"] is True, name
        assert {n["class_type"] for n in api.values()} & set(OUR_NODES), name


def test_object_info_lists_our_nodes(comfy):
    info = http(comfy.url + "/object_info")
    log = comfy.log.read_text()
    missing = [n for n in OUR_NODES if n not in info]
    assert not missing, f"not loaded: {missing}; server log:\n{log[-3000:]}"
    ours = sorted(n for n, v in info.items() if v.get("python_module") == "custom_nodes.vp2p")
    assert ours == sorted(OUR_NODES), f"this package's nodes on the server: {ours}"
    for name, (required, optional, outputs, output_node) in OUR_NODES.items():
        got = info[name]
        assert got["category"] == "Video-P2P" and got["display_name"], name
        order = got.get("input_order") or {s: list(got["input"].get(s, {})) for s in ("required", "optional")}
        assert order.get("required", []) == required, f"{name} required: {order.get('required')}"
        assert order.get("optional", []) == optional, f"{name} optional: {order.get('optional')}"
        for section, names in (("required", required), ("optional", optional)):
            assert list(got["input"].get(section, {})) == names, f"{name} {section}"
        assert list(got["output"]) == outputs, f"{name} outputs: {got['output']}"
        assert len(got["output_name"]) == len(outputs)
        assert bool(got["output_node"]) == output_node, name
    # shipped workflows use only nodes the server knows
    for name in WORKFLOW_TESTS:
        unknown = {n["class_type"] for n in shipped(name).values()} - set(info)
        assert not unknown, f"{name}: {unknown}"
    bad = [l for l in log.splitlines()
           if (("IMPORT FAILED" in l or "Cannot import" in l) and "vp2p" in l)
           or ("error occurred while retrieving information" in l and any(f"'{n}'" in l for n in OUR_NODES))]
    assert not bad, "\n".join(bad)


def test_core_signature_table_matches_server(comfy):
    """tests/test_workflows.py checks our workflows against a table of core nodes; check the table here."""
    table = core_signature_table()
    info = http(comfy.url + "/object_info")
    for name, sig in table.items():
        assert name in info, name
        got = info[name]
        order = got.get("input_order") or {s: list(got["input"].get(s, {})) for s in ("required", "optional")}
        names = order.get("required", []) + order.get("optional", [])
        assert names == [n for n, *_ in sig["inputs"]], f"{name}: inputs {names}"
        for inp, kind, opts, optional in sig["inputs"]:
            section = "optional" if optional else "required"
            entry = got["input"][section][inp]
            server_kind, server_opts = entry[0], entry[1] if len(entry) > 1 else {}
            if kind == "COMBO":
                choices = server_kind if isinstance(server_kind, list) else server_opts.get("options")
                assert isinstance(choices, list), f"{name}.{inp}: {entry}"
                if opts["choices"] != "FILES":
                    assert choices == opts["choices"], f"{name}.{inp}: {choices}"
            else:
                assert server_kind == kind, f"{name}.{inp}: {server_kind} != {kind}"
                for k in ("min", "max"):
                    if k in opts:
                        assert server_opts.get(k) == opts[k], f"{name}.{inp}.{k}: {server_opts.get(k)}"
        assert got["output"] == sig["outputs"], f"{name}: outputs {got['output']}"


@pytest.fixture(scope="module")
def word_swap(comfy):
    """The shipped word swap at test size: it tunes, inverts, caches both and saves them for the re-edit."""
    api = small_prompt("video_p2p_word_swap", "vp2p_swap")
    t = time.perf_counter()
    entry = run_prompt(comfy, api)
    took = time.perf_counter() - t
    run = check_run(comfy, api, entry)
    print(f"\nword swap (tune {TUNE_STEPS} steps with gradient checkpointing + invert {INVERT_STEPS} + edit "
          f"{INVERT_STEPS} steps, {FRAMES} frames {SIZE}x{SIZE}): {took:.1f}s")
    return SimpleNamespace(api=api, run=run, took=took)


def test_word_swap_workflow(comfy, word_swap):
    run = word_swap.run
    check_local_blend(run)
    for f in ("rabbit.delta.safetensors", "rabbit.inversion.safetensors"):
        assert (comfy.base / "output" / "vp2p" / f).is_file()
    cache = list((comfy.base / "models" / "vp2p" / "vp2p_cache").glob("*.safetensors"))
    assert sorted(p.name.split("-")[0] for p in cache) == ["delta", "inversion"]

    # a new target prompt: ComfyUI re-runs only the editor and what follows; same inversion, other edit. A high
    # mask_threshold makes the local-blend mask leave part of the clip out, where the frames must be the source's.
    # blend_region outline: the mask handed on is then the blend itself (a new word's default, grown, blend hands on
    # the two words' outlines, inside the box it blended in: tests/test_core_composite.py).
    api2 = copy.deepcopy(word_swap.api)
    api2[node_id(api2, "AttentionEditController")]["inputs"].update(
        target_prompts="a dog is jumping on the grass", blend_target_words="dog", mask_threshold=0.99,
        blend_region="outline")
    for nid, prefix in (("900", "vp2p_dog"), ("904", "masks/vp2p_dog"), ("901", "latents/vp2p_dog_edited"),
                        ("902", "latents/vp2p_dog_source")):
        api2[nid]["inputs"]["filename_prefix"] = prefix
    api2[node_id(api2, "SaveVideo")]["inputs"]["filename_prefix"] = "video/vp2p_dog"
    del api2[node_id(api2, "VideoP2PSampler")]["inputs"]["temporal_guidance"]  # as saved before Gen-1's guidance
    t = time.perf_counter()
    entry2 = run_prompt(comfy, api2)
    took2 = time.perf_counter() - t
    dog = check_run(comfy, api2, entry2)
    cached = set(messages(entry2, "execution_cached")[0]["nodes"])
    assert {node_id(api2, "OneShotTune"), node_id(api2, "NullTextVideoInvert"), node_id(api2, "InflateUNet")} <= cached
    check_local_blend(dog, partial=True)
    assert same(dog.source, run.source), "the same inversion gave another source branch"
    assert not same(dog.edited, run.edited), "a new target prompt gave the same edit"
    print(f"re-edit with a new target (tuning and inversion cached by ComfyUI): {took2:.1f}s")


def test_gen1_nodes_listed(comfy):
    info = http(comfy.url + "/object_info")
    sg = info["StructureGuidance"]
    assert sg["output"] == ["VP2P_STRUCTURE", "IMAGE"]
    assert sg["input"]["optional"]["control_net"][0] == "CONTROL_NET"
    assert list(sg["input"]["required"]) == ["structure", "structure_blur", "strength", "start_percent", "end_percent"]
    sampler = info["VideoP2PSampler"]["input"]["optional"]
    assert sampler["structure"][0] == "VP2P_STRUCTURE"
    assert sampler["temporal_guidance"][0] == "FLOAT" and sampler["temporal_guidance"][1]["default"] == 1.0
    assert CNET in info["ControlNetLoader"]["input"]["required"]["control_net_name"][0]


def test_controlnet_matches_comfyui(comfy):
    """nodes/controlnet.py's CONTROL_NET adapter gives ComfyUI's own ControlNet residuals, in diffusers' order,
    and the converted UNet with them gives ComfyUI's UNet with its ControlNet applied."""
    r = subprocess.run([comfy.python, str(HERE / "check_controlnet.py"), COMFYUI_DIR,
                        str(comfy.base / "models" / "checkpoints" / CKPT),
                        str(comfy.base / "models" / "controlnet" / CNET), str(REPO)],
                       capture_output=True, text=True, timeout=600, env=comfy.env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\ncontrolnet: {out}")
    assert out["control_net"] == "ControlNet" and out["compression"] == 8
    assert out["residuals"] == 4 and out["order_ok"]  # the small layout: conv_in, res, downsample, res
    assert out["residual_max_diff"] < 1e-4 * max(1.0, out["residual_scale"])
    assert out["unet_max_diff"] < 1e-4 * max(1.0, out["ref_std"])
    assert out["control_effect"] > 100 * out["unet_max_diff"]  # the ControlNet is not silent
    assert out["zero_strength_diff"] == 0.0
    assert out["controlnet_loaded"] and out["video_model_loaded"]


def test_structure_depth_workflow(comfy):
    """Gen-1's guidance: ControlNetLoader -> StructureGuidance -> the sampler's structure, temporal_guidance 1.5."""
    api = small_prompt("vp2p_structure_depth", "vp2p_structure")
    t = time.perf_counter()
    entry = run_prompt(comfy, api)
    took = time.perf_counter() - t
    steered = check_run(comfy, api, entry)
    check_local_blend(steered)
    sg = node_id(api, "StructureGuidance")
    previews = [n for n, v in api.items() if v["class_type"] == "PreviewImage" and v["inputs"]["images"][0] == sg]
    assert previews and len(entry["outputs"][previews[0]]["images"]) == FRAMES  # the blurred structure clip
    print(f"\nstructure + temporal guidance (edit {INVERT_STEPS} steps, w_t 1.5, depth ControlNet): {took:.1f}s")

    # strength 0 and w_t 1 give exactly the frames of the same graph without structure guidance
    sampler = node_id(api, "VideoP2PSampler")
    zero = copy.deepcopy(api)
    zero[sg]["inputs"]["strength"] = 0.0
    zero[sampler]["inputs"]["temporal_guidance"] = 1.0
    none = copy.deepcopy(zero)
    del none[sampler]["inputs"]["structure"]
    runs = []
    for prompt, prefix in ((zero, "vp2p_structure_zero"), (none, "vp2p_structure_none")):
        for nid, p in (("900", prefix), ("904", f"masks/{prefix}"), ("901", f"latents/{prefix}_edited"),
                       ("902", f"latents/{prefix}_source")):
            prompt[nid]["inputs"]["filename_prefix"] = p
        prompt[node_id(prompt, "SaveVideo")]["inputs"]["filename_prefix"] = f"video/{prefix}"
        runs.append(check_run(comfy, prompt, run_prompt(comfy, prompt)))
    a, b = runs
    assert same(a.edited, b.edited) and all((x == y).all() for x, y in zip(a.frames, b.frames))
    assert not same(steered.edited, b.edited), "structure guidance changed nothing"
    assert same(steered.source, b.source), "structure guidance must steer the edited branch only"

    # a structure clip of another size is fitted to the clip, as Apply ControlNet fits a hint (it was refused)
    small = copy.deepcopy(api)
    scale = small[sg]["inputs"]["structure"][0]
    small[scale]["inputs"].update(width=32, height=32)
    for nid, p in (("900", "vp2p_structure_small"), ("901", "latents/vp2p_structure_small_edited"),
                   ("902", "latents/vp2p_structure_small_source"), ("904", "masks/vp2p_structure_small")):
        small[nid]["inputs"]["filename_prefix"] = p
    small[node_id(small, "SaveVideo")]["inputs"]["filename_prefix"] = "video/vp2p_structure_small"
    fitted = check_run(comfy, small, run_prompt(comfy, small))
    assert not same(fitted.edited, b.edited), "a fitted structure clip changed nothing"

    # a structure clip of another frame count stops the sampler with a message naming structure
    bad = copy.deepcopy(api)
    frames_node = bad[scale]["inputs"]["image"][0]
    assert bad[frames_node]["class_type"] == "VideoP2PVideoFrames"
    bad[frames_node]["inputs"]["frames"] = FRAMES - 1
    entry = run_prompt(comfy, bad)
    assert entry["status"]["status_str"] == "error"
    err = messages(entry, "execution_error")[0]
    assert err["node_type"] == "VideoP2PSampler"
    assert f"structure: {FRAMES - 1} frames, but the clip has {FRAMES}" in err["exception_message"]


def test_bad_blend_word_reaches_the_user(comfy):
    api = small_prompt("video_p2p_word_swap", "vp2p_bad")
    api[node_id(api, "AttentionEditController")]["inputs"]["blend_words"] = "dragon"
    entry = run_prompt(comfy, api)
    assert entry["status"]["status_str"] == "error"
    err = messages(entry, "execution_error")[0]
    assert err["node_type"] == "AttentionEditController"
    assert "'dragon' is not in the prompt" in err["exception_message"]
    assert err["exception_type"].endswith("VP2PInputError")


def test_refine_reweight_workflow(comfy, word_swap):
    """Refinement ("an origami rabbit") with 'origami' reweighted by 2; tuning and inversion come from the
    vp2p_cache files the word swap wrote (same clip, prompt and settings), so the source branch is the word swap's."""
    cache_dir = comfy.base / "models" / "vp2p" / "vp2p_cache"
    cached_before = sorted(p.name for p in cache_dir.glob("*.safetensors"))
    api = small_prompt("video_p2p_refine_reweight", "vp2p_refine")
    t = time.perf_counter()
    run = check_run(comfy, api, run_prompt(comfy, api))
    print(f"\nrefine + reweight (delta and inversion from the vp2p_cache files): {time.perf_counter() - t:.1f}s")
    assert sorted(p.name for p in cache_dir.glob("*.safetensors")) == cached_before, "tuned or inverted again"
    check_local_blend(run)
    assert same(run.source, word_swap.run.source), "the cached inversion gave another source branch"
    assert not same(run.edited, word_swap.run.edited)

    # the same refinement without the reweight: the reweight changes the edit
    plain = copy.deepcopy(api)
    plain[node_id(plain, "AttentionEditController")]["inputs"].update(reweight_words="", reweight_values="")
    for nid, p in (("900", "vp2p_refine_plain"), ("904", "masks/vp2p_refine_plain"),
                   ("901", "latents/vp2p_refine_plain_edited"), ("902", "latents/vp2p_refine_plain_source")):
        plain[nid]["inputs"]["filename_prefix"] = p
    plain[node_id(plain, "SaveVideo")]["inputs"]["filename_prefix"] = "video/vp2p_refine_plain"
    other = check_run(comfy, plain, run_prompt(comfy, plain))
    assert same(other.source, run.source)
    assert not same(other.edited, run.edited), "reweighting 'origami' by 2 changed nothing"


def test_reedit_workflow_from_saved_files(comfy, word_swap):
    """Loads the word swap's saved delta and inversion (output/vp2p/rabbit.*): the source branch is the word
    swap's, and the word swap's own edit gives the word swap's frames again."""
    api = small_prompt("video_p2p_reedit", "vp2p_reedit")
    t = time.perf_counter()
    run = check_run(comfy, api, run_prompt(comfy, api))
    print(f"\nre-edit from the saved delta and inversion: {time.perf_counter() - t:.1f}s")
    check_local_blend(run)
    assert same(run.source, word_swap.run.source), "the saved inversion gave another source branch"
    assert not same(run.edited, word_swap.run.edited)

    # the word swap's own edit from the saved files: exactly the word swap's frames (delta and inversion round-trip)
    swap_edit = word_swap.api[node_id(word_swap.api, "AttentionEditController")]["inputs"]
    again = copy.deepcopy(api)
    again[node_id(again, "AttentionEditController")]["inputs"].update(
        {k: swap_edit[k] for k in again[node_id(again, "AttentionEditController")]["inputs"] if k != "clip"})
    for nid, p in (("900", "vp2p_reedit_again"), ("904", "masks/vp2p_reedit_again"),
                   ("901", "latents/vp2p_reedit_again_edited"), ("902", "latents/vp2p_reedit_again_source")):
        again[nid]["inputs"]["filename_prefix"] = p
    again[node_id(again, "SaveVideo")]["inputs"]["filename_prefix"] = "video/vp2p_reedit_again"
    rerun = check_run(comfy, again, run_prompt(comfy, again))
    assert same(rerun.edited, word_swap.run.edited), "the saved delta and inversion do not reproduce the edit"
    assert all((x == y).all() for x, y in zip(rerun.frames, word_swap.run.frames))

    # ComfyUI's own mask nodes into Set Latent Noise Mask, on the sampler's latent: the edit stays in the mask's left
    # half, and the sampler's blend_mask (saved as the masks) is local blend's within it
    masked = copy.deepcopy(api)
    masked["906"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": SIZE, "height": SIZE}}
    masked["907"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": SIZE // 2, "height": SIZE}}
    masked["908"] = {"class_type": "MaskComposite", "inputs": {"destination": ["906", 0], "source": ["907", 0],
                                                               "x": 0, "y": 0, "operation": "add"}}
    masked["909"] = {"class_type": "SetLatentNoiseMask",
                     "inputs": {"samples": [node_id(masked, "VAEEncode"), 0], "mask": ["908", 0]}}
    masked[node_id(masked, "VideoP2PSampler")]["inputs"]["latent"] = ["909", 0]
    for nid, p in (("900", "vp2p_reedit_masked"), ("904", "masks/vp2p_reedit_masked"),
                   ("901", "latents/vp2p_reedit_masked_edited"), ("902", "latents/vp2p_reedit_masked_source")):
        masked[nid]["inputs"]["filename_prefix"] = p
    masked[node_id(masked, "SaveVideo")]["inputs"]["filename_prefix"] = "video/vp2p_reedit_masked"
    half = check_run(comfy, masked, run_prompt(comfy, masked))
    check_local_blend(half)
    assert same(half.source, run.source)
    assert not half.mask[..., SIZE // 16:].any() and half.mask[..., :SIZE // 16].any()

    # an inversion of another clip of the same length and size is refused (here the clip's colours inverted)
    wrong = copy.deepcopy(api)
    light = node_id(wrong, "NormaliseLight")
    wrong["905"] = {"class_type": "ImageInvert", "inputs": {"image": wrong[light]["inputs"]["images"]}}
    wrong[light]["inputs"]["images"] = ["905", 0]
    entry = run_prompt(comfy, wrong)
    assert entry["status"]["status_str"] == "error"
    err = messages(entry, "execution_error")[0]
    assert err["node_type"] == "LoadVP2PInversion" and "made from another clip" in err["exception_message"], err

    # a delta from another checkpoint is refused with a message that says so
    other = comfy.base / "models" / "checkpoints" / "vp2p_other.safetensors"
    if not other.exists():
        subprocess.run([comfy.python, str(HERE / "make_checkpoint.py"), str(other), "--seed", "1"], check=True,
                       env=comfy.env, capture_output=True, timeout=600)
    api[node_id(api, "CheckpointLoaderSimple")]["inputs"]["ckpt_name"] = other.name
    entry = run_prompt(comfy, api)
    assert entry["status"]["status_str"] == "error"
    err = messages(entry, "execution_error")[0]
    assert err["node_type"] == "LoadVP2PDelta" and "another checkpoint" in err["exception_message"]


def upstream(api: dict, outputs: list) -> dict:
    """The part of an API prompt that the given output nodes depend on."""
    keep, todo = set(), list(outputs)
    while todo:
        nid = todo.pop()
        if nid not in keep:
            keep.add(nid)
            todo += [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2]
    return {k: copy.deepcopy(v) for k, v in api.items() if k in keep}


def test_stop_button_interrupts_tuning(comfy, word_swap):
    api = small_prompt("video_p2p_word_swap", "vp2p_stop")
    # warm ComfyUI's cache with this graph up to the tuning and inversion, which load from the vp2p_cache files
    # (an earlier test may have left another checkpoint loaded), so that OneShotTune is the first node that runs
    savers = [k for k, v in api.items() if v["class_type"] in ("SaveVP2PDelta", "SaveVP2PInversion")]
    warm = upstream(api, savers)
    for k in savers:
        warm[k]["inputs"]["filename"] = warm[k]["inputs"]["filename"].replace("rabbit", "stop_warm")
    entry = run_prompt(comfy, warm)
    assert entry["status"]["status_str"] == "success", messages(entry, "execution_error")
    api[node_id(api, "OneShotTune")]["inputs"].update(steps=10000, cache_dir="", seed=7)
    pid = http(comfy.url + "/prompt", {"prompt": api, "client_id": "vp2p-test"})["prompt_id"]
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until it runs: OneShotTune is its first node not in ComfyUI's cache
        if any(item[1] == pid for item in http(comfy.url + "/queue")["queue_running"]):
            break
        time.sleep(0.2)
    time.sleep(3)
    t = time.perf_counter()
    http(comfy.url + "/interrupt", {})
    while time.time() < deadline:
        h = http(f"{comfy.url}/history/{pid}")
        if pid in h and h[pid]["status"].get("completed") is not None:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the interrupted prompt did not finish")
    assert messages(h[pid], "execution_interrupted"), h[pid]["status"]
    assert messages(h[pid], "execution_interrupted")[0]["node_type"] == "OneShotTune"
    stopped_after = time.perf_counter() - t
    assert stopped_after < 30
    # the shared video model is intact: the word swap gives exactly its first frames again
    api = small_prompt("video_p2p_word_swap", "vp2p_after_stop")
    again = check_run(comfy, api, run_prompt(comfy, api))
    assert same(again.edited, word_swap.run.edited) and same(again.source, word_swap.run.source)
    assert all((a == b).all() for a, b in zip(again.frames, word_swap.run.frames))
    print(f"\nstop button: tuning stopped {stopped_after:.1f}s after /interrupt; the word swap then reproduced its frames")


def test_conversion_matches_comfyui(comfy):
    """nodes/convert.py's UNet gives ComfyUI's UNet output; a LoRA-style patch is applied, whether no clone's,
    another clone's or its own patches are in place in the shared weights, and without loading the clone where
    none are; the MODEL without patches does not take another clone's; the MODEL is unchanged."""
    ckpt = comfy.base / "models" / "checkpoints" / CKPT
    r = subprocess.run([comfy.python, str(HERE / "check_conversion.py"), COMFYUI_DIR, str(ckpt), str(REPO)],
                       capture_output=True, text=True, timeout=600, env=comfy.env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\nconversion: {out}")
    assert out["max_diff"] < 1e-4 * max(1.0, out["ref_std"])
    assert out["patch_diff_error"] < 1e-6 and out["model_unchanged_diff"] == 0.0
    assert out["patch_diff_error_other_in_place"] < 1e-6 and out["patch_diff_error_own_in_place"] < 1e-6
    assert not out["patched_loaded_to_read"] and out["model_unchanged_diff_after"] == 0.0
    assert out["plain_diff_other_in_place"] == 0.0 and out["patch_reads_identical"]
    assert out["patch_fingerprints_same"] and out["plain_fingerprints"] is None and out["other_fingerprint_differs"]
    # ModelSamplingDiscrete's override is the prediction type; zsnr and LCM are refused by name
    assert out["prediction"] == "epsilon" and out["v_override"] == "v_prediction"
    assert "zero terminal SNR" in out["refused_eps"] and "prediction type LCM" in out["refused_lcm"]
    assert not out["inference_params"] and out["patcher_loaded"]


def test_frontend_loads_ui_workflows(comfy, tmp_path):
    """The UI-format files load in ComfyUI's own frontend, and its Queue conversion gives the API twins.

    Needs node, Chromium and the playwright-core npm package: VP2P_PLAYWRIGHT_CORE=<its folder>
    (VP2P_CHROMIUM defaults to the chromium on PATH)."""
    pw = os.environ.get("VP2P_PLAYWRIGHT_CORE", "")
    chromium = os.environ.get("VP2P_CHROMIUM") or shutil.which("chromium") or ""
    node = shutil.which("node")
    if not (pw and Path(pw).is_dir() and chromium and node):
        pytest.skip("frontend check: needs node, chromium and VP2P_PLAYWRIGHT_CORE=<playwright-core package folder>")
    files = sorted((REPO / "workflows").glob("*.json"))
    out = tmp_path / "frontend.json"
    r = subprocess.run([node, str(HERE / "frontend_check.cjs"), pw, chromium, comfy.url, str(out)] + [str(f) for f in files],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(out.read_text())
    assert sorted(results) == sorted(str(f) for f in files)
    for f in files:
        got = results[str(f)]
        assert got["unknown"] == [], f"{f.name}: the frontend does not know {got['unknown']}"
        # (the frontend's own fetches of missing resources and of the internet fail here: not ours)
        errors = [l for l in got["logs"] if l.startswith(("pageerror", "error")) and "Failed to load resource" not in l]
        assert not errors, errors
        api = json.loads((REPO / "workflows" / "api" / f.name).read_text())
        strip = lambda d: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in d.items()}
        assert strip(got["output"]) == strip(api), f"{f.name}: the frontend queues something else than api/{f.name}"
    print(f"\nfrontend: {len(files)} UI workflows load and queue as their API twins")


def test_long_clip_workflow(comfy):
    """The long-clip workflow at test size: 10 frames through windows of 4 (overlap 1) in tuning, inversion and the
    sampler. Local blend keeps the source outside its mask on every frame, across the windows."""
    api = small_prompt("video_p2p_long_clip", "vp2p_long", frames=LONG_FRAMES)
    api[node_id(api, "VideoP2PContextWindows")]["inputs"].update(context_length=LONG_CONTEXT,
                                                                  context_overlap=LONG_OVERLAP)
    ctx = node_id(api, "VideoP2PContextWindows")
    for stage in ("OneShotTune", "NullTextVideoInvert", "VideoP2PSampler"):
        assert api[node_id(api, stage)]["inputs"]["context"] == [ctx, 0], stage
    # leave part of the clip out; blend_region outline: the mask handed on is the blend itself (see the dog edit)
    api[node_id(api, "AttentionEditController")]["inputs"].update(mask_threshold=0.99, blend_region="outline")
    t = time.perf_counter()
    entry = run_prompt(comfy, api)
    took = time.perf_counter() - t
    run = check_run(comfy, api, entry, frames=LONG_FRAMES)
    check_local_blend(run, partial=True)
    print(f"\nlong clip ({LONG_FRAMES} frames, windows of {LONG_CONTEXT}): {took:.1f}s")


def test_context_windows_match_comfyui(comfy):
    """Inside ComfyUI the windows and weights are comfy.context_windows' own; where the core has the same schedule
    (standard_static, batched) they agree, and the uniform schedules cover the clip and shift between steps."""
    r = subprocess.run([comfy.python, str(HERE / "check_context.py"), COMFYUI_DIR, str(REPO)],
                       capture_output=True, text=True, timeout=300, env=comfy.env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\ncontext windows: {out}")
    assert out["compared"] >= 40 and out["mismatches"] == []
    assert out["uniform_covers"] and out["uniform_shifts"]
