"""Text through ComfyUI's CLIP object: embeddings [1,77,D] and a tokenizer for word -> token indices.

Embeddings come from ``clip.tokenize`` + ``clip.encode_from_tokens``, so clip-skip, textual-inversion
embeddings and the checkpoint's own text encoder apply. Token indices come from the Hugging Face
CLIPTokenizer that ComfyUI's tokenizer wraps (``clip.tokenizer.clip_l.tokenizer`` for SD 1.x,
``clip_h`` for SD 2.x), so both agree on what a token is.
"""
from __future__ import annotations

from typing import Sequence

import torch

from vp2p_core import VP2PInputError
from vp2p_core.text import MAX_TOKENS, check_prompt_length


class TokenizerAdapter:
    """``encode(text) -> ids`` with BOS/EOS and ``decode(ids) -> str``, what vp2p_core's text helpers read."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def labels(self, text: str) -> list[str]:
        """One display label per token (BOS and EOS included)."""
        return [self.decode([i]).strip() for i in self.encode(text)]


def tokenizer_from_clip(clip) -> TokenizerAdapter:
    outer = getattr(clip, "tokenizer", None)
    name = getattr(outer, "clip", None)
    inner = getattr(outer, name, None) if isinstance(name, str) else None
    hf = getattr(inner, "tokenizer", None)
    if hf is None or not hasattr(hf, "encode") or not hasattr(hf, "decode"):
        raise VP2PInputError(
            "clip: expected the CLIP of an SD 1.x/2.x checkpoint (one CLIP text encoder with its tokenizer), "
            f"got {type(outer).__name__}")
    return TokenizerAdapter(hf)


def check_plain_tokens(tokens, expected: Sequence[int], what: str) -> None:
    """Refuse a prompt that ComfyUI's tokenizer reads otherwise than the plain tokenizer the word positions come
    from: weighting ``(word:1.2)``, emphasis ``(...)`` or an ``embedding:`` token move the words (or
    weight them), so a word swap, blend word or reweight would act on other tokens than it names. ``tokens`` is
    ``clip.tokenize(text)`` ({encoder: [[(id, weight[, word]), ...], ...]}); ``expected`` the plain ids, BOS to
    EOS. A layout other than that is left unchecked."""
    batches = next((v for v in tokens.values() if isinstance(v, list) and v and isinstance(v[0], list)), None) \
        if isinstance(tokens, dict) else None
    if batches is None:
        return
    first = [t for t in batches[0] if isinstance(t, (tuple, list)) and len(t) >= 2]
    ids = [t[0] for t in first[:len(expected)]]
    plain = len(batches) == 1 and all(isinstance(i, int) for i in ids) and ids == list(expected) and \
        all(float(t[1]) == 1.0 for t in first[:len(expected)])
    if not plain:
        raise VP2PInputError(
            f"{what}: ComfyUI's tokenizer reads this prompt with weighting, emphasis or an embedding ('(word:1.2)', "
            "'(...)', 'embedding:...'), which moves or weights its words, and the edit finds words by their plain "
            "positions; write the prompt as plain words (reweight_words / reweight_values weight a word)")


def encode_text(clip, text: str, what: str = "prompt") -> torch.Tensor:
    """[1,77,D] float32 CPU embedding of one prompt, as the UNet sees it; a prompt over 77 tokens is refused
    with the editor's message (``check_prompt_length``), and so is one that ComfyUI's own syntax changes
    (``check_plain_tokens``)."""
    ids = check_prompt_length(tokenizer_from_clip(clip), text, what)
    tokens = clip.tokenize(text)
    check_plain_tokens(tokens, ids, what)
    cond = clip.encode_from_tokens(tokens)
    if isinstance(cond, (tuple, list)):
        cond = cond[0]
    if cond.dim() != 3 or cond.shape[0] != 1 or cond.shape[1] > MAX_TOKENS:  # embeddings can lengthen a prompt
        raise VP2PInputError(f"{what}: the CLIP gave an embedding of shape {tuple(cond.shape)}, expected "
                             f"[1, {MAX_TOKENS}, D] (one CLIP pass); shorten the prompt")
    return cond.detach().to("cpu", torch.float32).clone()


def encode_texts(clip, texts: Sequence[str], what: str = "prompt") -> torch.Tensor:
    return torch.cat([encode_text(clip, t, what) for t in texts])
