"""How much device memory a stage needs besides the weights: estimates from activations measured per frame.

The figures are one UNet call's activations per frame it sees, at SD 1.5's 64x64 latents (512 px) in float32, as
``bench.window_memory`` measured them on the CPU (BENCHMARKS.md, "Memory of long clips at 512 px on a GPU, on
paper"): inference (DDIM inversion, the edit), a tuning step with gradient checkpointing, a null-text iteration
(forward and backward to the embedding) without and with gradient checkpointing. A tuning step without
checkpointing is counted as a null-text iteration without it. A GPU's kernels add workspace to these; they are
for deciding (what ComfyUI frees before a stage, whether null-text inversion checkpoints), not for accounting.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .options import InflationOptions

ACTIVATION_MIB_PER_FRAME = {"infer": 238, "train": 1094, "null_text": 2029, "null_text_checkpointed": 1114}
MEASURED_LATENT_AREA = 64 * 64
# auto checkpointing counts the activations x 1.1 + 1 GiB against the free memory: CPU-measured activations leave out
# a GPU's kernel workspaces, and ComfyUI keeps 0.4-0.6 GiB in reserve that its free count includes
CHECKPOINT_MARGIN = (1.1, 2 ** 30)


def working_memory(stage: str, rows: int, latent_hw: Sequence[int], dtype: torch.dtype,
                   trained_parameters: int = 0) -> int:
    """Bytes a stage needs on the device besides the weights: ``rows`` frames in one UNet call (clips x the frames
    of the clip or of a context window), the measured activations scaled by latent area and by the size of
    ``dtype`` (the computation's), plus the gradients and AdamW's two float32 moments of the ``trained_parameters``
    of a tuning."""
    if stage not in ACTIVATION_MIB_PER_FRAME:
        raise ValueError(f"stage: expected one of {sorted(ACTIVATION_MIB_PER_FRAME)}, got {stage!r}")
    h, w = latent_hw
    size = torch.empty((), dtype=dtype).element_size()
    per_row = ACTIVATION_MIB_PER_FRAME[stage] * 2 ** 20 * (h * w / MEASURED_LATENT_AREA) * (size / 4)
    return int(rows * per_row) + 12 * int(trained_parameters)


def call_rows(frames: int, context=None, frame_attention: str = InflationOptions.frame_attention,
              steps: int = 1) -> int:
    """Frames one UNet call sees of one clip: the clip's, or its largest context window's (anchor and previous-frame
    rows included) over a stage's ``steps`` (a host's schedule shifts its windows from step to step, and a window
    that does not hold frame 0 gains an anchor row)."""
    if context is None:
        return frames
    return max(len(w) for step in range(max(1, int(steps)) if context.schedule is not None else 1)
               for w in context.windows(frames, step=step, frame_attention=frame_attention))


def checkpoint_null_text(setting: str, rows: int, latent_hw: Sequence[int], dtype: torch.dtype,
                         free: Optional[int]) -> bool:
    """Whether null-text inversion's backward recomputes activations (gradient checkpointing) instead of holding
    them: ``setting`` on / off, or auto: on where the device's ``free`` bytes (None: not known, as on a plain CPU
    Host; ComfyUI gives the machine's available memory there) are fewer than the iteration's activations without
    it, with a margin for the kernels' workspace and what the host keeps in reserve (``CHECKPOINT_MARGIN``)."""
    if setting in ("on", "off"):
        return setting == "on"
    scale, extra = CHECKPOINT_MARGIN
    return free is not None and scale * working_memory("null_text", rows, latent_hw, dtype) + extra > free
