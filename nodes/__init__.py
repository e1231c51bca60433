"""ComfyUI glue for Video-P2P: node classes, conversion of ComfyUI objects, host hooks, files.

Nothing here imports ComfyUI at module level, so the package imports (and is tested) without it.
"""
from .nodes_vp2p import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
