"""Prompts as tokens: word -> token indices, length checks.

The tokenizer is anything with ``encode(text) -> ids`` (with BOS/EOS) and ``decode(ids) -> str``:
a transformers CLIPTokenizer, or ComfyUI's CLIP tokenizer, which wraps one.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

from .errors import VP2PInputError

MAX_TOKENS = 77


class TokenizerLike(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class Word:
    text: str  # lower case, as the tokenizer decodes its tokens
    tokens: tuple[int, ...]  # positions in the encoded prompt (BOS is 0), consecutive


def _punctuation(text: str) -> bool:
    return all(unicodedata.category(c).startswith("P") for c in text)


def _bare(text: str) -> str:
    """The text without punctuation at either end ('rabbit,' -> 'rabbit')."""
    return text.strip("".join(c for c in text if _punctuation(c)))


def token_words(prompt: str, tokenizer: TokenizerLike) -> list[Word]:
    """The prompt's words as the tokenizer sees them, punctuation aside.

    Whitespace separates words, and so does a punctuation token (',' '-' '(' ...), which belongs to no word:
    'rabbit,' is the word 'rabbit' (with a tokenizer that keeps the comma in the token, the token's text is
    taken without it). A token that starts with punctuation ("'s") starts a word of its own; the other tokens
    of one piece join into one word ('origami' may be two tokens, '25' is two). CLIP encodes
    each whitespace-separated piece of a prompt on its own, so encoding the pieces one by one gives the
    prompt's token positions; a tokenizer that does not is refused.
    """
    words: list[Word] = []
    pos = 1
    for chunk in prompt.split():
        ids = list(tokenizer.encode(chunk))[1:-1]
        text, tokens = "", []
        for k, i in enumerate(ids):
            piece = tokenizer.decode([i]).strip("#").strip().lower()
            if tokens and (_punctuation(piece) or _punctuation(piece[0])):
                words.append(Word(_bare(text), tuple(tokens)))
                text, tokens = "", []
            if not _punctuation(piece):
                text, tokens = text + piece, tokens + [pos + k]
        if tokens:
            words.append(Word(_bare(text), tuple(tokens)))
        pos += len(ids)
    if pos != len(tokenizer.encode(prompt)) - 1:
        raise VP2PInputError("clip: its tokenizer encodes the prompt differently from its words one by one; "
                             "expected the CLIP tokenizer of an SD 1.x/2.x checkpoint")
    return words


def prompt_words(prompt: str, tokenizer: TokenizerLike) -> list[str]:
    """The prompt's words (``token_words``) as text."""
    return [w.text for w in token_words(prompt, tokenizer)]


def clip_words(prompt: str) -> list[str]:
    """A prompt's words as SD's CLIP tokenizers read them: whatever the spacing, lowercased (they lowercase), but for
    ComfyUI's ``embedding:name`` words, whose names it looks up as written."""
    return [w if w.lower().startswith("embedding:") else w.lower() for w in prompt.split()]


def same_prompt(a: str, b: str) -> bool:
    """Whether two prompts are the same text to a CLIP tokenizer (``clip_words``)."""
    return clip_words(a) == clip_words(b)


def check_prompt_length(tokenizer: TokenizerLike, prompt: str, what: str) -> list[int]:
    ids = list(tokenizer.encode(prompt))
    if len(ids) > MAX_TOKENS:
        raise VP2PInputError(
            f"{what}: {len(ids)} tokens with start/end, over the {MAX_TOKENS} a CLIP text encoder reads; shorten it")
    return ids


def word_token_indices(prompt: str, word: str | int, tokenizer: TokenizerLike) -> list[int]:
    """Token positions (1-based, after BOS) of a word of the prompt, the reference's ``get_word_inds``.

    ``word`` is the word's text (every occurrence, case and punctuation aside; a text of several words,
    'big-red', matches them in a row) or its position among the prompt's ``token_words``.
    """
    words = token_words(prompt, tokenizer)
    if not isinstance(word, str):
        return list(words[word].tokens) if 0 <= word < len(words) else []
    query = prompt_words(word, tokenizer)
    n = len(query)
    hits = [words[s:s + n] for s in range(len(words) - n + 1) if n and [w.text for w in words[s:s + n]] == query]
    return sorted({t for hit in hits for w in hit for t in w.tokens})


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
    return [w for w in text.replace(",", " ").split() if not _punctuation(w)]


# relative distance between two embeddings of one source prompt beyond which different encoders made them. Measured
# on the shipped text encoder: its penultimate layer (CLIPSetLastLayer -2) is 52% away, its q/v weights perturbed by
# a tenth of their spread (a LoRA's size) 3%; fp16's rounding is about 0.05% per value
SAME_ENCODER_TOLERANCE = 0.02


def check_same_encoder(made, now, whose: str, fix: str) -> None:
    """Refuse ``now``, an embedding [1, 77, D] of the source prompt, where it is further than SAME_ENCODER_TOLERANCE
    from ``made``, the one ``whose`` (a tuning, an inversion) used: a CLIPSetLastLayer or a CLIP LoRA on one path
    only would pair the stages' results silently with another text encoding."""
    made, now = (e.detach().to("cpu").float() for e in (made, now))
    if made.shape == now.shape:
        apart = float((made - now).norm() / made.norm().clamp_min(1e-12))
        if apart > SAME_ENCODER_TOLERANCE:
            raise VP2PInputError(f"clip: the source prompt's embedding is {apart:.0%} away from the one {whose}; "
                                 f"{fix}")
