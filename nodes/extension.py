"""The extension ComfyUI loads (``comfy_entrypoint`` in the package's ``__init__``): every node, in menu order."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .nodes_composite import BlendMask
from .nodes_context import VideoP2PContextWindows
from .nodes_decode import AttentionMaps, DecodeFrames
from .nodes_edit import AttentionEditController
from .nodes_files import LoadVP2PDelta, LoadVP2PInversion, SaveVP2PDelta, SaveVP2PInversion
from .nodes_frames import VideoP2PVideoFrames
from .nodes_inflate import InflateUNet
from .nodes_invert import NullTextVideoInvert
from .nodes_light import NormaliseLight
from .nodes_sample import VideoP2PSampler
from .nodes_structure import StructureGuidanceNode
from .nodes_tune import OneShotTune

NODES: list[type[io.ComfyNode]] = [
    VideoP2PVideoFrames, NormaliseLight, InflateUNet, VideoP2PContextWindows, OneShotTune, NullTextVideoInvert,
    AttentionEditController, VideoP2PSampler, StructureGuidanceNode,
    DecodeFrames, AttentionMaps, BlendMask, SaveVP2PDelta, LoadVP2PDelta, SaveVP2PInversion, LoadVP2PInversion,
]


class VideoP2PExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
