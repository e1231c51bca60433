"""ComfyUI entry point of the Video-P2P custom nodes.

ComfyUI imports this folder as a package. The algorithm package ``vp2p_core`` beside it is imported by
its own name, so this folder goes on ``sys.path`` (appended: ComfyUI's own modules keep precedence; our
node glue is imported relatively, as ``<this package>.nodes``, never as a top-level ``nodes``).
"""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.append(_here)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = None

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
