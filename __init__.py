"""ComfyUI entry point of the Video-P2P custom nodes (ComfyUI's V3 extension API).

ComfyUI imports this folder as a package and awaits ``comfy_entrypoint``. The algorithm package ``vp2p_core``
beside it is imported by its own name, so this folder goes on ``sys.path`` (appended: ComfyUI's own modules keep
precedence; our node glue is imported relatively, as ``<this package>.nodes``, never as a top-level ``nodes``).
"""
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.append(_here)

WEB_DIRECTORY = None


async def comfy_entrypoint():
    """The extension: every Video-P2P node (imported here, so importing the package needs no ComfyUI)."""
    from .nodes.extension import VideoP2PExtension

    return VideoP2PExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
