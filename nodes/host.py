"""The vp2p_core Host for a node run: ComfyUI's device, model loading, progress bar, previews, stop button.

A VP2P_MODEL made by InflateUNet carries a ComfyUI ModelPatcher; one built outside ComfyUI (tests, scripts)
has none and gets vp2p_core's plain-torch Host on the device its weights are on.
"""
from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

import torch

from vp2p_core import Host
from vp2p_core.host import same_device

from .types import VP2PModel

log = logging.getLogger(__name__)


def progress_host() -> Host:
    """ComfyUI's progress bar and stop button for a node with no video model (Decode Frames); the plain Host
    outside a running ComfyUI, which has always imported its model management by the time a node runs (importing
    it here would set up a device in the tests' process)."""
    mm = sys.modules.get("comfy.model_management")
    if mm is None:
        return Host()
    import comfy.utils

    bar = comfy.utils.ProgressBar(1)
    return Host(progress=lambda step, total, preview: bar.update_absolute(step, total),
                interrupt=mm.throw_exception_if_processing_interrupted)


def make_host(model: VP2PModel, previews: bool = True, extra: Sequence = (), memory_required: int = 0) -> Host:
    """``extra``: ControlNet handles (``.module``, ``.patcher``) loaded together with the video model;
    ``memory_required``: the stage's working memory in bytes (``working_memory``), which ComfyUI frees before it
    loads them."""
    if model.patcher is None:
        device = next(model.video.unet.parameters()).device
        if not extra:
            return Host(device=device)

        def load_plain(module: torch.nn.Module) -> None:
            for m in [module] + [e.module for e in extra]:
                m.to(device)

        return Host(device=device, load=load_plain)
    return comfy_host(model, previews, extra, memory_required)


def warn_beyond_the_card(mm, device, memory_required: int, modules: Sequence[torch.nn.Module]) -> None:
    """Say so, before a long stage, where its working memory and weights exceed the whole card: ComfyUI frees every
    other model and loads anyway, and the stage runs out of memory minutes in (a 128-frame clip at 512 px without
    Context Windows asks about 60 GiB to edit in fp16, 250 GiB for null-text). A warning, not a refusal: the
    estimate is a bound, and the card's own figure says nothing of unified memory."""
    if torch.device(device).type == "cpu":
        return
    weights = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    total = int(mm.get_total_memory(device))
    if total and memory_required + weights > total:
        log.warning("Video-P2P: this stage needs about %.1f GiB (%.1f working, %.1f weights) and the card has %.1f: "
                    "expect it to run out of memory; Context Windows (VideoP2PContextWindows) bound the memory by the "
                    "window, and null_text_checkpointing on, weight_dtype fp16 or fewer frames lower it",
                    (memory_required + weights) / 2**30, memory_required / 2**30, weights / 2**30, total / 2**30)


def comfy_host(model: VP2PModel, previews: bool = True, extra: Sequence = (), memory_required: int = 0) -> Host:
    import comfy.model_management as mm
    import comfy.utils

    patcher = model.patcher
    device = patcher.load_device
    previewer = None
    if previews and model.latent_format is not None:
        import latent_preview

        previewer = latent_preview.get_previewer(device, model.latent_format)
    bar = comfy.utils.ProgressBar(1)

    def progress(step: int, total: int, preview: Optional[torch.Tensor]) -> None:
        image = None
        if previewer is not None and preview is not None:
            image = previewer.decode_latent_to_preview_image("JPEG", preview[:1].detach().float())
        bar.update_absolute(step, total, image)

    def load(module: torch.nn.Module) -> None:
        warn_beyond_the_card(mm, device, memory_required, [module] + [e.module for e in extra])
        # one call for the video model and its ControlNets, so that loading one does not unload the other
        mm.load_models_gpu([patcher] + [e.patcher for e in extra if e.patcher is not None],
                           memory_required=memory_required, force_full_load=True)
        # ComfyUI's no-VRAM mode loads nothing fully; the core needs the UNet on the compute device.
        for m in [module] + [e.module for e in extra]:
            if not same_device(next(m.parameters()).device, torch.device(device)):
                m.to(device)

    return Host(device=torch.device(device), progress=progress,
                interrupt=mm.throw_exception_if_processing_interrupted, load=load,
                # on a CPU, ComfyUI's figure is the machine's available memory: null_text_checkpointing auto turns
                # on where the activations would not fit in it (SD 1.5, 8 frames at 512 px: about 16 GiB)
                free_memory=lambda: int(mm.get_free_memory(device)))
