"""Build SD1.x's CLIP BPE tokenizer files offline from open_clip's merge list.

Why: the tiny world model must tokenize exactly like Stable Diffusion 1.x (same ids, same
word->token mapping used by the attention editor) without fetching anything from a hub.
The source is ``open_clip/bpe_simple_vocab_16e6.txt.gz`` from the open-clip-torch wheel on PyPI
(``pip download --no-deps open-clip-torch``); we only read the gz file, never import open_clip.

Usage: python -m vp2p_world.build_tokenizer path/to/bpe_simple_vocab_16e6.txt.gz OUT_DIR
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import sys

logger = logging.getLogger(__name__)

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode map (same order as open_clip)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_vocab_and_merges(bpe_gz_path: str) -> tuple[dict[str, int], list[str]]:
    """Return (vocab, merges) exactly as open_clip's SimpleTokenizer builds them."""
    lines = gzip.open(bpe_gz_path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(p) for p in pairs)
    vocab.extend([SOT, EOT])
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_tokenizer(bpe_gz_path: str, out_dir: str) -> None:
    """Write vocab.json, merges.txt and the HF configs that CLIPTokenizer.from_pretrained reads."""
    os.makedirs(out_dir, exist_ok=True)
    vocab, merges = build_vocab_and_merges(bpe_gz_path)
    assert len(vocab) == 49408, len(vocab)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.write("\n".join(merges) + "\n")
    special = {"bos_token": SOT, "eos_token": EOT, "pad_token": EOT, "unk_token": EOT}
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        **special,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    logger.info("wrote CLIP tokenizer (%d tokens, %d merges) to %s", len(vocab), len(merges), out_dir)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    write_tokenizer(sys.argv[1], sys.argv[2])
