"""Per-word cross-attention maps as one labelled image grid (rows: prompts, columns: tokens)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from vp2p_core import VP2PInputError

SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def _label_strip(text: str, width: int, height: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.text((3, 2), text[: max(1, width // 6)], fill=(255, 255, 255))
    return np.asarray(img, dtype=np.float32) / 255.0


def _heat(m: torch.Tensor) -> torch.Tensor:
    """[h,w] in 0..1 -> [h,w,3] (black-red-yellow-white)."""
    r = (m * 3).clamp(0, 1)
    g = (m * 3 - 1).clamp(0, 1)
    b = (m * 3 - 2).clamp(0, 1)
    return torch.stack([r, g, b], dim=-1)


def attention_grid(maps: torch.Tensor, token_labels: list[list[str]], frame: int = -1, cell: int = 96,
                   label_height: int = 14, max_tokens: Optional[int] = None) -> torch.Tensor:
    """maps [P, F, hb, wb, 77] -> IMAGE [1, H, W, 3]: one row per prompt, one column per token (BOS/EOS
    and padding left out), each map scaled to its own maximum as Prompt-to-Prompt shows them. A cell is ``cell``
    pixels high and as wide as the clip's aspect gives (a 16:9 clip's maps are not squeezed into squares)."""
    if maps is None:
        raise VP2PInputError("attention_maps: the sampler stored no attention maps for this edit")
    p, f = maps.shape[:2]
    if frame >= f:
        raise VP2PInputError(f"frame: {frame} is past the last frame ({f - 1}); use -1 for the average of all frames")
    m = maps.float().mean(dim=1) if frame < 0 else maps[:, frame].float()  # [P, hb, wb, 77]
    rows = []
    for i in range(p):
        labels = token_labels[i] if i < len(token_labels) else []
        idx = [j for j, lab in enumerate(labels) if lab not in SPECIAL and 0 < j < m.shape[-1]]
        if max_tokens:
            idx = idx[:max_tokens]
        rows.append([(lab_i, labels[lab_i]) for lab_i in idx])
    cols = max(1, max(len(r) for r in rows))
    width = max(1, round(cell * m.shape[2] / m.shape[1]))
    out = torch.zeros(p * (cell + label_height), cols * width, 3)
    for i, row in enumerate(rows):
        y = i * (cell + label_height)
        for c, (j, label) in enumerate(row):
            a = m[i, :, :, j]
            a = a / a.max().clamp_min(1e-12)
            a = F.interpolate(a[None, None], size=(cell, width), mode="nearest")[0, 0]
            out[y:y + cell, c * width:(c + 1) * width] = _heat(a)
            strip = torch.from_numpy(_label_strip(label, width, label_height))
            out[y + cell:y + cell + label_height, c * width:(c + 1) * width] = strip
    return out.unsqueeze(0).clamp(0, 1)


def mask_images(mask: torch.Tensor, scale: int = 8) -> torch.Tensor:
    """LocalBlend mask [n, F, 1, h, w] -> MASK [n*F, h*scale, w*scale]."""
    m = mask.float().flatten(0, 1)  # [n*F, 1, h, w]
    m = F.interpolate(m, scale_factor=scale, mode="nearest")
    return m[:, 0].clamp(0, 1)
