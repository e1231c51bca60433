"""Our nodes inside a real ComfyUI server: listed in /object_info, and the shipped API workflows run.

Runs when COMFYUI_DIR points at a ComfyUI checkout (python: COMFYUI_PYTHON, else
$COMFYUI_DIR/../comfyvenv/bin/python, else this interpreter). Nothing is written into the checkout: the
server gets a throwaway --base-directory whose custom_nodes/ links to this repository, a small random
SD1.5-format checkpoint (make_checkpoint.py) and a 4-frame clip. Settings are small: 4 frames at 64x64,
2 tuning steps, 5 inversion steps (2 null-text iterations each). It takes
minutes on a 2-core CPU: the small checkpoint keeps SD's 320 channels.

    COMFYUI_DIR=/work/comfyui .venv/bin/python -m pytest -q -s tests/integration
"""
from __future__ import annotations

import copy
import importlib.util
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
START_TIMEOUT = 180
RUN_TIMEOUT = 600


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


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem + "_for_integration", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    t0 = time.perf_counter()
    py = comfy_python()
    base = tmp_path_factory.mktemp("comfy_base")
    for d in ("custom_nodes", "models/checkpoints", "models/controlnet", "input", "output", "temp", "user"):
        (base / d).mkdir(parents=True, exist_ok=True)
    os.symlink(REPO, base / "custom_nodes" / "vp2p")
    env = dict(os.environ, COMFYUI_DIR=COMFYUI_DIR, PYTHONUNBUFFERED="1")
    subprocess.run([py, str(HERE / "make_checkpoint.py"), str(base / "models" / "checkpoints" / CKPT), "--seed", "0"],
                   check=True, env=env, capture_output=True, timeout=600)
    subprocess.run([py, str(HERE / "make_controlnet.py"), str(base / "models" / "checkpoints" / CKPT),
                    str(base / "models" / "controlnet" / CNET), "--seed", "0"],
                   check=True, env=env, capture_output=True, timeout=600)
    subprocess.run([py, str(HERE / "make_clip.py"), str(base / "input" / CLIP), "6", "64"], check=True,
                   capture_output=True, timeout=120)
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
    info = SimpleNamespace(url=url, base=base, log=log_path, version=comfy_version(), python=py, setup_s=setup_s)
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


def small_prompt(name: str, prefix: str) -> dict:
    """The shipped API workflow with test-sized settings, plus a SaveImage of the edited frames."""
    api = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
    api = copy.deepcopy(api)
    decode = None
    for nid, node in api.items():
        ct, inp = node["class_type"], node["inputs"]
        if ct == "CheckpointLoaderSimple":
            inp["ckpt_name"] = CKPT
        elif ct == "LoadVideo":
            inp["file"] = CLIP  # the structure workflow's depth clip too: any clip of the same frames works
        elif ct == "ControlNetLoader":
            inp["control_net_name"] = CNET
        elif ct == "ImageFromBatch":
            inp["length"] = 4
        elif ct == "ImageScale":
            inp["width"] = inp["height"] = 64
        elif ct == "OneShotTune":
            inp["steps"], inp["gradient_checkpointing"] = 2, False
        elif ct == "NullTextVideoInvert":
            inp["steps"], inp["inner_steps"] = 5, 2
        elif ct == "SaveVideo":
            inp["filename_prefix"] = f"video/{prefix}"
        elif ct == "DecodeFrames":
            decode = nid
    api["900"] = {"class_type": "SaveImage", "inputs": {"images": [decode, 0], "filename_prefix": prefix}}
    return api


def node_id(api: dict, class_type: str) -> str:
    return next(k for k, v in api.items() if v["class_type"] == class_type)


def check_frames(comfy, entry: dict, frames: int, size: int = 64) -> None:
    from PIL import Image

    images = entry["outputs"]["900"]["images"]
    assert len(images) == frames
    for im in images:
        path = comfy.base / "output" / im["subfolder"] / im["filename"]
        with Image.open(path) as img:
            assert img.size == (size, size)


# ------------------------------------------------------------------------------------------------------------

def test_object_info_lists_our_nodes(comfy):
    sys.path.insert(0, str(REPO))
    from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    info = http(comfy.url + "/object_info")
    for name, cls in NODE_CLASS_MAPPINGS.items():
        assert name in info, f"{name} not loaded; server log:\n{comfy.log.read_text()[-3000:]}"
        got = info[name]
        assert got["category"] == "Video-P2P" and got["display_name"] == NODE_DISPLAY_NAME_MAPPINGS[name]
        assert got["python_module"] == "custom_nodes.vp2p"
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            assert list(got["input"].get(section, {})) == list(spec.get(section, {})), f"{name} {section}"
        assert got["output"] == list(cls.RETURN_TYPES) and got["output_name"] == list(cls.RETURN_NAMES)
        assert got["output_node"] == bool(getattr(cls, "OUTPUT_NODE", False))
    assert "IMPORT FAILED" not in "".join(l for l in comfy.log.read_text().splitlines() if "vp2p" in l)


def test_core_signature_table_matches_server(comfy):
    """tests/test_workflows.py checks our workflows against a table of core nodes; check the table here."""
    table = load_module(REPO / "tests" / "test_workflows.py").CORE_SIGNATURES
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


def test_word_swap_workflow(comfy):
    api = small_prompt("video_p2p_word_swap", "vp2p_swap")
    t = time.perf_counter()
    entry = run_prompt(comfy, api)
    took = time.perf_counter() - t
    assert entry["status"]["status_str"] == "success", messages(entry, "execution_error")
    check_frames(comfy, entry, 4)
    videos = list((comfy.base / "output" / "video").glob("vp2p_swap*.mp4"))
    assert videos and videos[0].stat().st_size > 0
    for f in ("rabbit.delta.safetensors", "rabbit.inversion.safetensors"):
        assert (comfy.base / "output" / "vp2p" / f).is_file()
    cache = list((comfy.base / "models" / "vp2p" / "vp2p_cache").glob("*.safetensors"))
    assert sorted(p.name.split("-")[0] for p in cache) == ["delta", "inversion"]
    print(f"\nword swap (tune 2 + invert 5 + edit 5 steps, 4 frames 64x64): {took:.1f}s")

    # a new target prompt: ComfyUI re-runs only the editor and what follows
    api2 = copy.deepcopy(api)
    api2[node_id(api2, "AttentionEditController")]["inputs"].update(
        target_prompts="a dog is jumping on the grass", blend_target_words="dog")
    api2["900"]["inputs"]["filename_prefix"] = "vp2p_dog"
    api2[node_id(api2, "SaveVideo")]["inputs"]["filename_prefix"] = "video/vp2p_dog"
    del api2[node_id(api2, "VideoP2PSampler")]["inputs"]["temporal_guidance"]  # as saved before Gen-1's guidance
    t = time.perf_counter()
    entry2 = run_prompt(comfy, api2)
    took2 = time.perf_counter() - t
    assert entry2["status"]["status_str"] == "success", messages(entry2, "execution_error")
    cached = set(messages(entry2, "execution_cached")[0]["nodes"])
    assert {node_id(api2, "OneShotTune"), node_id(api2, "NullTextVideoInvert"), node_id(api2, "InflateUNet")} <= cached
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
                       capture_output=True, text=True, timeout=600)
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


def saved_frames(comfy, prefix):
    import numpy as np
    from PIL import Image

    return [np.asarray(Image.open(f)) for f in sorted((comfy.base / "output").glob(f"{prefix}_[0-9]*_.png"))]


def test_structure_depth_workflow(comfy):
    """Gen-1's guidance: ControlNetLoader -> StructureGuidance -> the sampler's structure, temporal_guidance 1.5."""
    import numpy as np

    api = small_prompt("vp2p_structure_depth", "vp2p_structure")
    t = time.perf_counter()
    entry = run_prompt(comfy, api)
    took = time.perf_counter() - t
    assert entry["status"]["status_str"] == "success", messages(entry, "execution_error")
    check_frames(comfy, entry, 4)
    sg = node_id(api, "StructureGuidance")
    previews = [n for n, v in api.items() if v["class_type"] == "PreviewImage" and v["inputs"]["images"][0] == sg]
    assert previews and len(entry["outputs"][previews[0]]["images"]) == 4  # the blurred structure clip
    print(f"\nstructure + temporal guidance (edit 5 steps, w_t 1.5, depth ControlNet): {took:.1f}s")

    # strength 0 and w_t 1 give exactly the frames of the same graph without structure guidance
    sampler = node_id(api, "VideoP2PSampler")
    zero = copy.deepcopy(api)
    zero[sg]["inputs"]["strength"] = 0.0
    zero[sampler]["inputs"]["temporal_guidance"] = 1.0
    zero["900"]["inputs"]["filename_prefix"] = "vp2p_structure_zero"
    none = copy.deepcopy(zero)
    del none[sampler]["inputs"]["structure"]
    none["900"]["inputs"]["filename_prefix"] = "vp2p_structure_none"
    for prompt in (zero, none):
        e = run_prompt(comfy, prompt)
        assert e["status"]["status_str"] == "success", messages(e, "execution_error")
    a, b = saved_frames(comfy, "vp2p_structure_zero"), saved_frames(comfy, "vp2p_structure_none")
    assert len(a) == len(b) == 4 and all(np.array_equal(x, y) for x, y in zip(a, b))
    steered = saved_frames(comfy, "vp2p_structure")
    assert len(steered) == 4 and not all(np.array_equal(x, y) for x, y in zip(steered, b))

    # a structure clip of another size stops the sampler with a message naming structure
    bad = copy.deepcopy(api)
    bad[bad[sg]["inputs"]["structure"][0]]["inputs"].update(width=32, height=32)
    entry = run_prompt(comfy, bad)
    assert entry["status"]["status_str"] == "error"
    err = messages(entry, "execution_error")[0]
    assert err["node_type"] == "VideoP2PSampler"
    assert "structure: frames of 32x32 do not fit latents of 8x8 (expected 64x64)" in err["exception_message"]


def test_bad_blend_word_reaches_the_user(comfy):
    api = small_prompt("video_p2p_word_swap", "vp2p_bad")
    api[node_id(api, "AttentionEditController")]["inputs"]["blend_words"] = "dragon"
    entry = run_prompt(comfy, api)
    assert entry["status"]["status_str"] == "error"
    err = messages(entry, "execution_error")[0]
    assert err["node_type"] == "AttentionEditController"
    assert "'dragon' is not in the prompt" in err["exception_message"]
    assert err["exception_type"].endswith("VP2PInputError")


def test_refine_reweight_workflow(comfy):
    api = small_prompt("video_p2p_refine_reweight", "vp2p_refine")
    t = time.perf_counter()
    entry = run_prompt(comfy, api)
    assert entry["status"]["status_str"] == "success", messages(entry, "execution_error")
    check_frames(comfy, entry, 4)
    print(f"\nrefine + reweight (delta and inversion from the vp2p_cache files): {time.perf_counter() - t:.1f}s")


def test_reedit_workflow_from_saved_files(comfy):
    """Runs after test_word_swap_workflow, which saved output/vp2p/rabbit.{delta,inversion}.safetensors."""
    if not (comfy.base / "output" / "vp2p" / "rabbit.delta.safetensors").is_file():
        pytest.skip("needs the files test_word_swap_workflow saves")
    api = small_prompt("video_p2p_reedit", "vp2p_reedit")
    entry = run_prompt(comfy, api)
    assert entry["status"]["status_str"] == "success", messages(entry, "execution_error")
    check_frames(comfy, entry, 4)
    # a delta from another checkpoint is refused with a message that says so
    other = comfy.base / "models" / "checkpoints" / "vp2p_other.safetensors"
    if not other.exists():
        subprocess.run([comfy.python, str(HERE / "make_checkpoint.py"), str(other), "--seed", "1"], check=True,
                       env=dict(os.environ, COMFYUI_DIR=COMFYUI_DIR), capture_output=True, timeout=600)
    api[node_id(api, "CheckpointLoaderSimple")]["inputs"]["ckpt_name"] = other.name
    entry = run_prompt(comfy, api)
    assert entry["status"]["status_str"] == "error"
    err = messages(entry, "execution_error")[0]
    assert err["node_type"] == "LoadVP2PDelta" and "another checkpoint" in err["exception_message"]


def test_stop_button_interrupts_tuning(comfy):
    # warm ComfyUI's cache with this graph (an earlier test may have left another checkpoint loaded), so that
    # OneShotTune is the first node that runs; its tuning and inversion load from the vp2p_cache files
    warm = run_prompt(comfy, small_prompt("video_p2p_word_swap", "vp2p_stop_warm"))
    assert warm["status"]["status_str"] == "success", messages(warm, "execution_error")
    api = small_prompt("video_p2p_word_swap", "vp2p_stop")
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
    entry = run_prompt(comfy, small_prompt("video_p2p_word_swap", "vp2p_after_stop"))
    assert entry["status"]["status_str"] == "success", messages(entry, "execution_error")
    import numpy as np
    from PIL import Image

    def frames(prefix):
        files = sorted((comfy.base / "output").glob(f"{prefix}_*.png"))
        return [np.asarray(Image.open(f)) for f in files]

    first, again = frames("vp2p_swap"), frames("vp2p_after_stop")
    assert len(first) == len(again) == 4
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    print(f"\nstop button: tuning stopped {stopped_after:.1f}s after /interrupt; the word swap then reproduced its frames")


def test_conversion_matches_comfyui(comfy):
    """nodes/convert.py's UNet gives ComfyUI's UNet output; a LoRA-style patch is applied; the MODEL is unchanged."""
    ckpt = comfy.base / "models" / "checkpoints" / CKPT
    r = subprocess.run([comfy.python, str(HERE / "check_conversion.py"), COMFYUI_DIR, str(ckpt), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\nconversion: {out}")
    assert out["max_diff"] < 1e-4 * max(1.0, out["ref_std"])
    assert out["patch_diff_error"] < 1e-6 and out["model_unchanged_diff"] == 0.0
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
