"""Token alignment between source and target prompts (Prompt-to-Prompt's seq_aligner).

Replace (word swap) maps each source token to its target token(s); refine aligns token ids with
Needleman-Wunsch (gap 0, match 1, mismatch -1), new target tokens keep their own maps.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import VP2PInputError
from .text import MAX_TOKENS, TokenizerLike, token_words


def _global_align(x: list[int], y: list[int], gap: int = 0, match: int = 1, mismatch: int = -1):
    score = np.zeros((len(x) + 1, len(y) + 1), dtype=np.int32)
    score[0, 1:] = (np.arange(len(y)) + 1) * gap
    score[1:, 0] = (np.arange(len(x)) + 1) * gap
    trace = np.zeros((len(x) + 1, len(y) + 1), dtype=np.int32)
    trace[0, 1:], trace[1:, 0], trace[0, 0] = 1, 2, 4
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            left = score[i, j - 1] + gap
            up = score[i - 1, j] + gap
            diag = score[i - 1, j - 1] + (match if x[i - 1] == y[j - 1] else mismatch)
            score[i, j] = max(left, up, diag)
            trace[i, j] = 1 if score[i, j] == left else 2 if score[i, j] == up else 3
    return trace


def _aligned_y_to_x(x: list[int], y: list[int], trace) -> torch.Tensor:
    i, j = len(x), len(y)
    mapper = []
    while i > 0 or j > 0:
        if trace[i, j] == 3:
            i, j = i - 1, j - 1
            mapper.append((j, i))
        elif trace[i, j] == 1:
            j -= 1
            mapper.append((j, -1))
        elif trace[i, j] == 2:
            i -= 1
        else:
            break
    mapper.reverse()
    return torch.tensor(mapper, dtype=torch.int64)


def refinement_mapper(source: str, target: str, tokenizer: TokenizerLike, max_len: int = MAX_TOKENS):
    """(mapper [max_len] long, alphas [max_len]): target token j reads source token mapper[j] where alpha is 1."""
    x = list(tokenizer.encode(source))
    y = list(tokenizer.encode(target))
    base = _aligned_y_to_x(x, y, _global_align(x, y))
    alphas = torch.ones(max_len)
    alphas[: base.shape[0]] = base[:, 1].ne(-1).float()
    mapper = torch.zeros(max_len, dtype=torch.int64)
    mapper[: base.shape[0]] = base[:, 1]
    # the target's padding reads the source's, position for position after each prompt's end (the reference reads
    # source position j: where the source is longer, that is the words the target dropped)
    mapper[base.shape[0]:] = (len(x) + torch.arange(max_len - len(y))).clamp_max(max_len - 1)
    return mapper, alphas


def _piece_tokens(prompt: str, tokenizer: TokenizerLike) -> list[range]:
    """The token positions of each space-separated piece of the prompt (CLIP encodes each piece on its own;
    ``token_words`` checks that the tokenizer does)."""
    out, pos = [], 1
    for piece in prompt.split():
        n = len(list(tokenizer.encode(piece))) - 2
        out.append(range(pos, pos + n))
        pos += n
    return out


def replacement_mapper(source: str, target: str, tokenizer: TokenizerLike, max_len: int = MAX_TOKENS) -> torch.Tensor:
    """[max_len, max_len] matrix M with target map = source map @ M (word swap).

    Words are the tokenizer's (``token_words``: 'rabbit,' is 'rabbit' and a comma). The prompts pair up word by
    word, and so do the tokens between words (BOS, punctuation). Punctuation only the target has joins the word
    before it, so that it reads a map ('ball' -> 'ball!' pairs as the reference pairs its space-split words);
    punctuation only the source has maps nowhere. Where the word counts differ but the space-separated pieces'
    do not ('man' -> 'Spider-Man'), the pieces pair up, punctuation inside them included, as in the reference. A
    source unit of k tokens that becomes n target tokens spreads weight 1/n. After such a unit the source and
    target positions differ; unlike the reference (which then maps j -> j) we keep them aligned.
    """
    words_x, words_y = token_words(source, tokenizer), token_words(target, tokenizer)
    units = []  # (source positions, target positions) that pair up
    if len(words_x) == len(words_y):
        i = j = 0  # the first source / target token not yet mapped
        for wx, wy in zip(words_x, words_y):
            units += [(range(i, wx.tokens[0]), range(j, wy.tokens[0])), (wx.tokens, wy.tokens)]
            i, j = wx.tokens[-1] + 1, wy.tokens[-1] + 1
    else:  # 'man' -> 'Spider-Man': the reference's pairing, by space-separated pieces, punctuation and all
        pieces_x, pieces_y = _piece_tokens(source, tokenizer), _piece_tokens(target, tokenizer)
        if len(pieces_x) != len(pieces_y):
            raise VP2PInputError(
                f"target_prompts: a word swap (replace) needs the same number of words as source_prompt, but the "
                f"source has {len(words_x)} ({source!r}) and the target {len(words_y)} ({target!r}), and their "
                "space-separated pieces differ in number too; use edit_mode refine for other edits")
        units = [(range(0, 1), range(0, 1))] + list(zip(pieces_x, pieces_y))  # BOS, then piece by piece
        i, j = pieces_x[-1].stop, pieces_y[-1].stop
    mapper = np.zeros((max_len, max_len))
    end_x, end_y = len(tokenizer.encode(source)) - 1, len(tokenizer.encode(target)) - 1  # EOS positions
    units.append((range(i, end_x), range(j, end_y)))  # punctuation after the last word
    merged: list[tuple[list[int], list[int]]] = []
    for s, t in units:
        s, t = [k for k in s if k < max_len], [k for k in t if k < max_len]
        if t and not s and merged:  # punctuation only the target has joins the word before it (as in the
            merged[-1] = (merged[-1][0], merged[-1][1] + t)  # reference, whose words are split at spaces)
        else:
            merged.append((s, t))
    for s, t in merged:
        if len(s) == len(t):
            mapper[s, t] = 1
        elif s and t:
            for t_ in t:
                mapper[s, t_] = 1 / len(t)
    # EOS and padding pair up position for position; where the source's run out first (it has more tokens), the
    # target's last positions read the source's last, so that every target position reads one
    for t_ in range(min(end_y, max_len), max_len):
        mapper[min(end_x + t_ - end_y, max_len - 1), t_] = 1
    return torch.from_numpy(mapper).float()
