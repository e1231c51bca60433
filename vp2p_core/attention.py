"""Attention processors of the inflated UNet (diffusers processor protocol: one ``__call__`` each).

Frame attention replaces every self-attention ``attn1``, cross-attention keeps its maths but lets a
controller read and edit its maps, temporal attention attends over the frame axis. Probabilities are
materialised only in the cross-attention layers a controller reads; everything else is one
``scaled_dot_product_attention`` call. The number of frames and the controller come from a
``FrameState`` shared by every processor of one UNet, so one inflated model serves clips of any length.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F

from .options import FRAME_ATTENTION, InflationOptions

FRAME_MODES = FRAME_ATTENTION


@dataclass
class FrameState:
    """Per-UNet call state shared by the inflated modules."""

    num_frames: int = 1
    independent: bool = False  # frames as separate images (Gen-1's eps_img): no cross-frame anything
    group_norm: str = InflationOptions.group_norm  # ResNet GroupNorm statistics per frame or per clip
    controller: Any = None  # an AttentionController while editing, else None
    forward_clips: int = 0  # UNet evaluations, counted in clips (one prompt x one clip = 1)
    extra: dict = field(default_factory=dict)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def project_out(attn, x: torch.Tensor) -> torch.Tensor:
    x = attn.to_out[0](x)
    return attn.to_out[1](x)


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) in float32, stabilised by the row max (not the global max)."""
    sim = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    return sim.softmax(dim=-1)


def share_source_rows(x: torch.Tensor, clips: int, source: int, targets: list[int],
                      controlled_rows: Optional[int] = None) -> torch.Tensor:
    """Copy the source clip's rows onto the target clips' rows (x: [clips*k, ...], clip-major; with
    ``controlled_rows``, only x's first rows are those clips and the rest, the unconditional clips, stay), in one
    copy of x. The controller's contiguous targets are written through a slice: no index tensor to the device."""
    out = x.clone()
    if not targets:
        return out
    xv = out[:x.shape[0] if controlled_rows is None else controlled_rows].view(clips, -1, *x.shape[1:])
    contiguous = list(targets) == list(range(targets[0], targets[0] + len(targets)))
    rows = slice(targets[0], targets[0] + len(targets)) if contiguous else list(targets)
    xv[rows] = xv[source].unsqueeze(0).expand(len(targets), *xv.shape[1:])
    return out


def _apply_self_replace(state: FrameState, kind: str, q, k, rows_per_clip_total: int, tokens: int):
    """Self-replace without the map: targets attend with the source's q and k over their own v.

    softmax(Q_src K_src^T) V_tgt equals the reference's 'replace the target map with the source map'
    and is one SDPA call. Applies to the controlled clips (the first rows of the batch) only.
    """
    ctrl = state.controller
    if ctrl is None or not ctrl.self_replace_active(kind, tokens):
        return q, k
    cc = ctrl.controlled_clips
    n = rows_per_clip_total * cc
    src, tgts = ctrl.source_index, ctrl.target_indices
    return (share_source_rows(q, cc, src, tgts, controlled_rows=n),
            share_source_rows(k, cc, src, tgts, controlled_rows=n))


class FrameAttnProcessor:
    """Self-attention across frames: frame i queries the keys/values of frame 0 (``first``, Video-P2P)
    or of frames 0 and i-1 (``first_prev``, Tune-A-Video).

    In ``first`` mode all frames of a clip share one key set, so the queries of every frame are stacked on
    the token axis and attended in one call: K/V are projected for frame 0 only and never repeated.
    """

    def __init__(self, state: FrameState, mode: str):
        if mode not in FRAME_MODES:
            raise ValueError(f"frame attention mode must be one of {FRAME_MODES}, got {mode!r}")
        self.state, self.mode = state, mode

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        st = self.state
        f = 1 if st.independent else st.num_frames
        rows_per_clip = st.num_frames if st.independent else 1
        bf, n, c = hidden_states.shape
        b = bf // f
        h = attn.heads
        q = attn.to_q(hidden_states)
        if self.mode == "first" or f == 1:
            kv_in = hidden_states.view(b, f, n, c)[:, 0]
            qh = split_heads(q.reshape(b, f * n, -1), h)
            kh = split_heads(attn.to_k(kv_in), h)
            vh = split_heads(attn.to_v(kv_in), h)
            qh, kh = _apply_self_replace(st, "frame", qh, kh, rows_per_clip, n)
            out = F.scaled_dot_product_attention(qh, kh, vh)
            out = merge_heads(out).reshape(bf, n, -1)
        else:
            k_all = attn.to_k(hidden_states).view(b, f, n, -1)
            v_all = attn.to_v(hidden_states).view(b, f, n, -1)

            def first_and_previous(x: torch.Tensor) -> torch.Tensor:
                """Each frame's keys (values): frame 0's, then its previous frame's (frame 0's own for frame 0),
                by slices and a broadcast rather than list indexing (no index tensor to the device, one gather
                less)."""
                prev = torch.cat([x[:, :1], x[:, :-1]], dim=1)
                return torch.cat([x[:, :1].expand_as(x), prev], dim=2).reshape(bf, 2 * n, -1)

            k, v = first_and_previous(k_all), first_and_previous(v_all)
            qh, kh, vh = split_heads(q, h), split_heads(k, h), split_heads(v, h)
            qh, kh = _apply_self_replace(st, "frame", qh, kh, f, n)
            out = merge_heads(F.scaled_dot_product_attention(qh, kh, vh))
        return project_out(attn, out.to(hidden_states.dtype))


class CrossAttnProcessor:
    """Text cross-attention whose maps a controller may read (store, replace, refine, reweight)."""

    def __init__(self, state: FrameState, name: str):
        self.state, self.name = state, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        h = attn.heads
        qh = split_heads(attn.to_q(hidden_states), h)
        kh = split_heads(attn.to_k(context), h)
        vh = split_heads(attn.to_v(context), h)
        ctrl = self.state.controller
        tokens = hidden_states.shape[1]
        if ctrl is None or not ctrl.reads_cross(self.name, tokens):
            out = F.scaled_dot_product_attention(qh, kh, vh)
        else:
            f = self.state.num_frames
            m = ctrl.controlled_clips * f
            probs = attention_probs(qh[:m], kh[:m], attn.scale)
            probs = ctrl.cross(probs.view(ctrl.controlled_clips, f, *probs.shape[1:]), self.name)
            probs = probs.reshape(m, *probs.shape[2:])
            out_ctrl = torch.matmul(probs.to(vh.dtype), vh[:m])
            if m < qh.shape[0]:
                out = torch.cat([out_ctrl, F.scaled_dot_product_attention(qh[m:], kh[m:], vh[m:])])
            else:
                out = out_ctrl
        return project_out(attn, merge_heads(out).to(hidden_states.dtype))


# Rows (batch entries) per scaled_dot_product_attention call in the frame axis' attention. Its batch is clips x
# pixels: 17 clips at 512 px (five targets with edit guidance) or 8 at 768 px pass 65,535, the CUDA grid's limit,
# which some versions of the flash and memory-efficient kernels hit ("invalid configuration argument", pytorch
# issues 142228 and 146704). The rows are independent, so the chunks give the same result. Not measured on a GPU.
MAX_SDPA_ROWS = 32768


def rowwise_sdpa(qh: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention`` over [batch, heads, tokens, d], at most MAX_SDPA_ROWS batch entries at a
    time."""
    rows = MAX_SDPA_ROWS
    if qh.shape[0] <= rows:
        return F.scaled_dot_product_attention(qh, kh, vh)
    out = qh.new_empty((*qh.shape[:-1], vh.shape[-1]))  # the chunks written in place: no second copy to concatenate
    for i in range(0, qh.shape[0], rows):
        out[i:i + rows] = F.scaled_dot_product_attention(qh[i:i + rows], kh[i:i + rows], vh[i:i + rows])
    return out


class TemporalAttnProcessor:
    """Attention over the frame axis; input rows are (clip, pixel), tokens are frames."""

    def __init__(self, state: FrameState):
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        h = attn.heads
        bd, f, c = hidden_states.shape
        qh = split_heads(attn.to_q(hidden_states), h)
        kh = split_heads(attn.to_k(hidden_states), h)
        vh = split_heads(attn.to_v(hidden_states), h)
        ctrl = self.state.controller
        if ctrl is not None:
            d = self.state.extra.get("pixels", 0)
            qh, kh = _apply_self_replace(self.state, "temporal", qh, kh, d, f)
        out = rowwise_sdpa(qh, kh, vh)
        return project_out(attn, merge_heads(out).to(hidden_states.dtype))

