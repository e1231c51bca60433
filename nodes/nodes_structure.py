"""Structure Guidance: Gen-1's structure clip through a ControlNet, for the sampler (vp2p_core.structure)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from vp2p_core import StructureOptions, VP2PInputError, blur_structure
from vp2p_core.structure import check_structure_images

from . import controlnet
from .schema import CATEGORY, VP2PStructureIO, widgets
from .types import VP2PStructure


class StructureGuidanceNode(io.ComfyNode):
    """Node id ``StructureGuidance``; the class name leaves that name to ``vp2p_core.StructureGuidance``."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="StructureGuidance",
            display_name="Structure Guidance (Video-P2P, Gen-1)",
            category=CATEGORY,
            description="Gen-1's structure guidance: a ControlNet follows a per-frame structure clip (depth from any "
                        "depth node, edges, masks) while the sampler edits, so the edit keeps the source's shapes. "
                        "structure_blur sets how much of the shape is kept. Connect the output to VideoP2PSampler's "
                        "structure input.",
            inputs=[
                io.Image.Input("structure", tooltip="The per-frame structure clip: one map per frame of the edited "
                               "clip, or one for all (depth from any depth node pack, edges, masks; a depth video "
                               "loaded with LoadVideo works too). Another size than the clip's is cut to its aspect "
                               "about the middle and scaled, as Apply ControlNet fits a hint."),
                *widgets(StructureOptions, ["structure_blur", "strength", "start_percent", "end_percent"]),
                io.ControlNet.Input("control_net", optional=True, tooltip="An SD 1.x/2.x ControlNet from "
                                    "ControlNetLoader (e.g. a depth ControlNet for a depth clip). Give this or "
                                    "diffusers_controlnet."),
                io.String.Input("diffusers_controlnet", optional=True, default="", tooltip="Instead of control_net: "
                                "the name of a diffusers ControlNetModel folder under models/controlnet (config.json "
                                "+ safetensors weights), loaded offline. Empty: use control_net."),
            ],
            outputs=[
                VP2PStructureIO.Output("structure_guidance", display_name="structure",
                                       tooltip="Structure guidance for VideoP2PSampler's structure "
                                                            "input."),
                io.Image.Output("structure_preview", display_name="structure_preview",
                                tooltip="The structure clip blurred at structure_blur, at its own size (the "
                                        "sampler fits it to the clip's)."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, diffusers_controlnet: str = "", **_) -> str:
        """Re-run when the named diffusers ControlNet folder's files change (its name alone would keep the old
        weights until an input changed); a connected control_net is ComfyUI's to track. A bad name is reported by
        execute."""
        name = (diffusers_controlnet or "").strip()
        if not name:
            return ""
        try:
            path = controlnet.find_diffusers_controlnet(name)
        except VP2PInputError as e:
            return f"missing:{e}"
        stats = [(f.name, f.stat()) for f in sorted(path.iterdir()) if f.is_file()]
        return ";".join(f"{file}:{st.st_mtime_ns}:{st.st_size}" for file, st in stats)

    @classmethod
    def execute(cls, structure, control_net=None, diffusers_controlnet: str = "", **widget_values) -> io.NodeOutput:
        options = StructureOptions.from_values(widget_values)
        name = (diffusers_controlnet or "").strip()
        if control_net is None and not name:
            raise VP2PInputError("control_net: connect a ControlNet (ControlNetLoader) or give diffusers_controlnet, "
                                 "the name of a diffusers ControlNet folder under models/controlnet")
        if control_net is not None and name:
            raise VP2PInputError(f"diffusers_controlnet: {name!r} is given and control_net is connected; use one "
                                 "(empty diffusers_controlnet to use control_net)")
        check_structure_images(structure)
        handle = (controlnet.comfy_controlnet(control_net) if control_net is not None
                  else controlnet.load_diffusers_controlnet(name))
        images = structure.detach().to("cpu", torch.float32)
        maps = images.movedim(-1, 1)
        preview = blur_structure(maps.expand(-1, 3, -1, -1) if maps.shape[1] == 1 else maps, options.structure_blur)
        spec = VP2PStructure(control=handle, images=images, options=options)
        return io.NodeOutput(spec, preview.movedim(1, -1).clamp(0, 1).contiguous())
