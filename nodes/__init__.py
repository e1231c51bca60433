"""ComfyUI glue for Video-P2P, one module per stage mirroring ``vp2p_core``.

- ``nodes_*.py``: the nodes, in ComfyUI's V3 schema (``comfy_api.latest.io``), listed in ``extension.py``;
  their widgets come from the core's options (``schema.py``). Only these modules import ComfyUI at module
  level, and ComfyUI imports them through the package's ``comfy_entrypoint``.
- ``types.py`` (socket objects), ``convert.py`` (MODEL -> diffusers UNet), ``text.py`` (CLIP -> embeddings),
  ``host.py`` (device, loading, progress, previews, stop button), ``files.py`` (file names, cache),
  ``maps.py`` (attention-map images), ``controlnet.py`` (ControlNets as residual functions): no ComfyUI import
  at module level, so they are tested without it.
"""
