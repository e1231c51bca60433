"""The node layer under test: the V3 node classes, their widget defaults, and a call as ComfyUI makes it."""
from __future__ import annotations

import pytest
import torch

latest = pytest.importorskip("comfy_api.latest", reason="node tests: no ComfyUI tree (set COMFYUI_DIR to one; "
                             "comfy_api needs the av package)")
io = latest.io

from nodes.extension import NODES  # noqa: E402
from nodes.schema import node_map  # noqa: E402

NODE_MAP = node_map(NODES)


def widget_defaults(cls) -> dict:
    """{input: default} of every widget input, as a new node in the UI has them."""
    spec = cls.INPUT_TYPES()
    return {name: opts["default"] for section in ("required", "optional")
            for name, (_, *rest) in spec.get(section, {}).items() for opts in rest if "default" in opts}


def run(cls, **inputs):
    """``cls.execute`` with the widget defaults and ``inputs``, under inference mode as ComfyUI runs nodes."""
    with torch.inference_mode():
        return cls.execute(**{**widget_defaults(cls), **inputs})
