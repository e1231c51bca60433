"""Prompts as tokens: word -> token indices, length checks.

The tokenizer is anything with ``encode(text) -> ids`` (with BOS/EOS) and ``decode(ids) -> str``:
a transformers CLIPTokenizer, or ComfyUI's CLIP tokenizer, which wraps one.
"""
from __future__ import annotations

from typing import Iterable, Protocol, Sequence

from .errors import VP2PInputError

MAX_TOKENS = 77


class TokenizerLike(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def prompt_words(prompt: str) -> list[str]:
    return prompt.split(" ")


def check_prompt_length(tokenizer: TokenizerLike, prompt: str, what: str) -> list[int]:
    ids = list(tokenizer.encode(prompt))
    if len(ids) > MAX_TOKENS:
        raise VP2PInputError(
            f"{what}: {len(ids)} tokens with start/end, over the {MAX_TOKENS} a CLIP text encoder reads; shorten it")
    return ids


def _normalise(word: str) -> str:
    return word.strip().lower()


def word_token_indices(prompt: str, word: str | int, tokenizer: TokenizerLike) -> list[int]:
    """Token positions (1-based, after BOS) of a word of the prompt, the reference's ``get_word_inds``.

    ``word`` is the word's text (every occurrence, case-insensitive) or its position in the prompt.
    """
    split_text = prompt_words(prompt)
    if isinstance(word, str):
        places = [i for i, w in enumerate(split_text) if _normalise(w) == _normalise(word)]
    else:
        places = [word]
    out: list[int] = []
    if not places:
        return out
    words_encode = [tokenizer.decode([item]).strip("#").strip() for item in tokenizer.encode(prompt)][1:-1]
    cur_len, ptr = 0, 0
    for i, piece in enumerate(words_encode):
        cur_len += len(piece)
        if ptr in places:
            out.append(i + 1)
        if ptr < len(split_text) and cur_len >= len(split_text[ptr]):
            ptr += 1
            cur_len = 0
    return out


def words_token_indices(prompt: str, words: Iterable[str], tokenizer: TokenizerLike, what: str) -> list[int]:
    """Indices of several words; a word absent from the prompt is an error that names it."""
    out: list[int] = []
    for w in words:
        idx = word_token_indices(prompt, w, tokenizer)
        if not idx:
            raise VP2PInputError(f"{what}: the word {w!r} is not in the prompt {prompt!r}")
        out += idx
    return sorted(set(out))


def parse_words(text: str | Iterable[str] | None) -> list[str]:
    """'red, blue ball' -> ['red', 'blue', 'ball'] (commas or spaces)."""
    if text is None:
        return []
    if not isinstance(text, str):
        return [w for t in text for w in parse_words(t)]
    return [w for w in text.replace(",", " ").split() if w]
