"""Test-scale stand-ins for a model (fixed seeds, no downloads): a tiny random SD-shaped UNet, a word-level
tokenizer with CLIP's shape and a table "text encoder". The tests and bench.core_bench build on them."""
from __future__ import annotations

import torch


def tiny_unet(seed: int = 0, heads: int = 2, cross_dim: int = 32, prediction_type: str = "epsilon", sd2: bool = False):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_dim,
        attention_head_dim=(8 if sd2 else heads), norm_num_groups=8, use_linear_projection=sd2,
    )
    return unet.eval()


class ToyTokenizer:
    """Word-level tokenizer with CLIP's shape: BOS, one or more ids per word, EOS. Words of the form
    'aa-bb' take two tokens ('aa-', 'bb'), so tests can cover multi-token words."""

    BOS, EOS = 49406, 49407

    def __init__(self):
        self.vocab: dict[str, int] = {}
        self.inv: dict[int, str] = {}

    def _id(self, piece: str) -> int:
        if piece not in self.vocab:
            i = 100 + len(self.vocab)
            self.vocab[piece], self.inv[i] = i, piece
        return self.vocab[piece]

    def encode(self, text: str) -> list[int]:
        ids = [self.BOS]
        for w in text.lower().split():
            parts = w.split("-")
            ids += [self._id(p + "-") for p in parts[:-1]] + [self._id(parts[-1])]
        return ids + [self.EOS]

    def decode(self, ids) -> str:
        return " ".join(self.inv.get(i, "<|endoftext|>" if i == self.EOS else "<|startoftext|>") for i in ids)


def toy_embed(tokenizer: ToyTokenizer, prompts: list[str], dim: int = 32, seed: int = 1) -> torch.Tensor:
    """Deterministic 'text encoder': a fixed random vector per token id, padded with EOS to 77."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(50000, dim, generator=g)
    out = []
    for p in prompts:
        ids = tokenizer.encode(p)[:77]
        ids = ids + [ToyTokenizer.EOS] * (77 - len(ids))
        out.append(table[torch.tensor(ids)])
    return torch.stack(out)


def tiny_video_model(generator: torch.Generator, temporal_scale: float = 0.05):
    """The tiny UNet inflated, its temporal attention's output projections drawn from ``generator`` at
    ``temporal_scale`` (zero after inflation: a model whose frames interact, as after tuning), fingerprinted "test"."""
    from vp2p_core import VideoModel

    model = VideoModel.from_unet(tiny_unet())
    with torch.no_grad():
        for n, p in model.unet.named_parameters():
            if "attn_temp.to_out" in n:
                p.copy_(torch.randn(p.shape, generator=generator) * temporal_scale)
    model.delta_fingerprint = "test"
    return model
