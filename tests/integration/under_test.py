"""For the check_*.py scripts, run with ComfyUI's python: ComfyUI on the path (on the CPU where there is no GPU)
and this repository loaded as the custom-node package ComfyUI would load."""
import importlib
import importlib.util
import os
import sys

PACKAGE = "vp2p_under_test"


def load(comfy_dir: str, repo: str):
    """Put ComfyUI on the path and load the repository as a package; returns a function that imports one of its
    modules by dotted name (``module("nodes.convert")``)."""
    sys.path.insert(0, comfy_dir)
    import torch
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
    spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(repo, "__init__.py"),
                                                  submodule_search_locations=[repo])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = pkg
    spec.loader.exec_module(pkg)
    return lambda name: importlib.import_module(f"{PACKAGE}.{name}")
