"""ComfyUI V3 inputs built from the core's options, and the socket types of our objects.

A widget's name, default, range, choices and tooltip come from ``vp2p_core.options``: this module only
says how each kind of setting looks in ComfyUI. Imports ComfyUI's ``comfy_api``, so only the node modules
import it (ComfyUI loads them through ``comfy_entrypoint``).
"""
from __future__ import annotations

from typing import Sequence

from comfy_api.latest import io

from vp2p_core.options import Options, Setting

from . import types

CATEGORY = "Video-P2P"

VP2PModelIO = io.Custom(types.VP2P_MODEL)
VP2PInversionIO = io.Custom(types.VP2P_INVERSION)
VP2PEditIO = io.Custom(types.VP2P_EDIT)
VP2PMapsIO = io.Custom(types.VP2P_MAPS)
VP2PStructureIO = io.Custom(types.VP2P_STRUCTURE)
VP2PContextIO = io.Custom(types.VP2P_CONTEXT)
VP2PLightIO = io.Custom(types.VP2P_LIGHT)


CACHE_TOOLTIP = ("Folder under models/vp2p where results are kept by a hash of the model, clip, prompt and "
                 "settings; the same inputs load the file instead of computing again. Empty: no cache.")
CACHE_DIR = "vp2p_cache"  # the cache_dir widget's default (nodes.files keeps the folder rules)
DEFAULT_PROMPT = "a rabbit is jumping on the grass"


def cache_input() -> io.String.Input:
    return io.String.Input("cache_dir", default=CACHE_DIR, tooltip=CACHE_TOOLTIP)


def source_prompt_input(tooltip: str) -> io.String.Input:
    return io.String.Input("source_prompt", multiline=True, default=DEFAULT_PROMPT, tooltip=tooltip)


def context_input() -> io.Input:
    """The optional context-windows socket of every node that runs the UNet on the clip."""
    return VP2PContextIO.Input("context", optional=True, tooltip=(
        "Optional: context windows from VideoP2PContextWindows, for clips longer than the model should see at "
        "once. Use the same windows for tuning, inversion and sampling."))


def widget(s: Setting, optional: bool = False) -> io.Input:
    """The V3 widget input of one option."""
    kw = dict(tooltip=s.tooltip, optional=optional)
    if s.kind == "int":
        # a seed is a setting of its own here, not something to randomise after every run
        extra = {"control_after_generate": False} if s.name.endswith("seed") else {}
        return io.Int.Input(s.name, default=s.default, min=s.min, max=s.max, step=s.step, **extra, **kw)
    if s.kind in ("float", "fraction"):
        return io.Float.Input(s.name, default=float(s.default), min=s.min, max=s.max, step=s.step, round=s.round, **kw)
    if s.kind == "bool":
        return io.Boolean.Input(s.name, default=s.default, **kw)
    if s.kind == "choice":
        return io.Combo.Input(s.name, options=list(s.choices), default=s.default, **kw)
    if s.kind == "str":
        return io.String.Input(s.name, default=s.default, multiline=s.multiline, **kw)
    raise TypeError(f"{s.name}: a {s.kind!r} setting has no widget")


def widgets(options: type[Options], names: Sequence[str], optional: Sequence[str] = ()) -> list[io.Input]:
    """Widgets of ``options`` in the given order (the order of a saved workflow's widget values)."""
    return [widget(options.setting(n), optional=n in optional) for n in names]


def node_map(node_list: Sequence[type[io.ComfyNode]]) -> dict[str, type[io.ComfyNode]]:
    """{node id: class}, as ComfyUI registers them."""
    return {cls.GET_SCHEMA().node_id: cls for cls in node_list}
