"""Fingerprints and safetensors files (atomic writes, metadata checks); never unpickles."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import VP2PInputError, with_article

FORMAT_VERSION = "1"


def tensor_digest(h, name: str, t: torch.Tensor, samples: int = 4096) -> None:
    """Feed a tensor's name, shape and an evenly strided sample of its values into a hash."""
    flat = t.detach().reshape(-1)
    step = max(1, flat.numel() // samples)
    vals = flat[::step][:samples].float().cpu().contiguous()
    h.update(name.encode())
    h.update(str(tuple(t.shape)).encode())
    h.update(vals.numpy().tobytes())


def state_fingerprint(named: dict[str, torch.Tensor] | list[tuple[str, torch.Tensor]]) -> str:
    items = sorted(named.items() if isinstance(named, dict) else named, key=lambda kv: kv[0])
    h = hashlib.sha256()
    for name, t in items:
        tensor_digest(h, name, t)
    return h.hexdigest()[:16]


def combine_fingerprints(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def atomic_save(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write safetensors to a temporary file beside the target, then rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    meta["vp2p_format"] = FORMAT_VERSION
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checked(path: str | os.PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file of ours and check that it holds a ``kind`` (delta / inversion)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise VP2PInputError(f"{kind} file: expected a .safetensors file, got {path.name!r}")
    if not path.is_file():
        raise VP2PInputError(f"{kind} file: {str(path)!r} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("vp2p_kind") != kind:
        found = with_article(f"{meta['vp2p_kind']} file") if meta.get("vp2p_kind") else "a foreign file"
        raise VP2PInputError(f"{kind} file: {path.name!r} is {found}, not {with_article(kind)} file")
    return tensors, meta


def meta_json(meta: dict[str, str], key: str, default=None):
    v: Optional[str] = meta.get(key)
    return default if v is None else json.loads(v)
