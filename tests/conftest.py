"""Test set-up: ComfyUI's ``comfy_api`` for the node tests, from a ComfyUI tree beside the repository.

The nodes are ComfyUI V3 nodes (``comfy_api.latest.io``). Their tests import ``comfy_api`` from the tree
named by ``COMFYUI_DIR`` (default ``../shared/comfyui`` beside the repository); where there is none, the node
tests are skipped with that reason and the core and world tests run as usual.
"""
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR") or REPO.parent / "shared" / "comfyui")

if (COMFYUI_DIR / "comfy_api").is_dir() and str(COMFYUI_DIR) not in sys.path:
    sys.path.append(str(COMFYUI_DIR))  # after ours: our `nodes` package wins over ComfyUI's nodes.py
    # comfy_api imports ComfyUI's folder_paths, whose folders would lie in the (read-only) tree: give it a
    # throwaway base directory, as the integration test gives the server one.
    from comfy.cli_args import args as comfy_args

    comfy_args.base_directory = tempfile.mkdtemp(prefix="vp2p-tests-comfyui-")
