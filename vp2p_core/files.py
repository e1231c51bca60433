"""Fingerprints and safetensors files (atomic writes, metadata checks); never unpickles."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import VP2PInputError, with_article

FORMAT_VERSION = "1"


def tensor_digest(h, name: str, t: torch.Tensor, samples: int = 4096,
                  rounding: Sequence[torch.dtype] = ()) -> None:
    """Feed a tensor's name, shape and an evenly strided sample of its values (rounded to each of ``rounding`` in
    turn first: the digest the same weights get when a model holds them in that precision) into a hash."""
    flat = t.detach().reshape(-1)
    step = max(1, flat.numel() // samples)
    vals = flat[::step][:samples]
    for dtype in rounding:
        vals = vals.to(dtype)
    vals = vals.float().cpu().contiguous()
    h.update(name.encode())
    h.update(str(tuple(t.shape)).encode())
    h.update(vals.numpy().tobytes())


def state_fingerprint(named: dict[str, torch.Tensor] | list[tuple[str, torch.Tensor]],
                      rounding: Sequence[torch.dtype] = ()) -> str:
    items = sorted(named.items() if isinstance(named, dict) else named, key=lambda kv: kv[0])
    h = hashlib.sha256()
    for name, t in items:
        tensor_digest(h, name, t, rounding=rounding)
    return h.hexdigest()[:16]


def nested_digest(h, obj, depth: int = 0) -> None:
    """Feed a nest of tensors, numbers, strings, sequences, mappings and plain objects (their attributes) into a
    hash, tensors as ``tensor_digest`` samples them: what a host's weight patches (a LoRA's tensors and strengths)
    are, whatever arithmetic applies them."""
    if depth > 8:
        raise ValueError("nested_digest: nested more than 8 deep")
    if isinstance(obj, torch.Tensor):
        tensor_digest(h, "tensor", obj)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            nested_digest(h, obj[k], depth + 1)
        h.update(b"}")
    elif isinstance(obj, (set, frozenset)):
        nested_digest(h, sorted(obj, key=repr), depth + 1)
    elif isinstance(obj, (list, tuple)):
        h.update(b"(")
        for v in obj:
            nested_digest(h, v, depth + 1)
        h.update(b")")
    else:  # a class instance (ComfyUI's weight adapters: their tensors and keys) or a function (by name)
        h.update(f"{type(obj).__module__}.{getattr(obj, '__qualname__', type(obj).__qualname__)}".encode())
        if hasattr(obj, "__dict__") and not callable(obj):
            nested_digest(h, {k: v for k, v in vars(obj).items() if not k.startswith("_")}, depth + 1)


def combine_fingerprints(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it there: ``path`` is the old file or
    the whole new one, never half-written, and a failed write leaves no temporary file. ``suffix``: the temporary
    file's (a writer that picks its format by the name's extension needs that extension last)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        try:  # mkstemp makes it 0600; a saved file gets the mode any other file would
            os.chmod(tmp, 0o666 & ~process_umask())
        except OSError:  # a file system without modes (FAT refuses a chmod): keep what it gave
            pass
        with open(tmp, "r+b") as f:  # on disk before the rename, so that a power cut leaves no empty file behind
            # (r+b: Windows' fsync, FlushFileBuffers, needs a handle that may write)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def check_writable(path: str | os.PathLike, what: str, folder: bool = False) -> None:
    """An output (a file, or a ``folder`` to write into; the input named ``what``) that could not be written, refused
    by name before the work that makes it: a blocked ``--json`` failed after the whole benchmark, a Save node's name
    under a file with pathlib's own error."""
    out = Path(path)
    if not folder and out.is_dir():
        raise VP2PInputError(f"{what}: {out} is a folder; give a file name")
    blocker = next((q for q in ((out,) if folder else ()) + tuple(out.parents) if q.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise VP2PInputError(f"{what}: {blocker} is a file; give a "
                             f"{'folder to write into' if folder else 'path in a folder'}")
    if blocker is not None and not os.access(blocker, os.W_OK):
        raise VP2PInputError(f"{what}: {blocker} cannot be written to; give a folder you can write to")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``atomic_write`` of a UTF-8 text file."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_save(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write safetensors through ``atomic_write`` (never half-written)."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    meta["vp2p_format"] = FORMAT_VERSION
    return atomic_write(path, lambda tmp: save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                                                    tmp, metadata=meta))


def process_umask() -> int:
    """The process's umask: from /proc where there is one (setting it, the only other way to read it, would open a
    moment in which another thread's new files get mode 0666), else by setting it and setting it back at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


SAVED_BY = {"delta": "SaveVP2PDelta", "inversion": "SaveVP2PInversion"}


def describe_kind(kind: Optional[str]) -> str:
    """What a safetensors file is, by its ``vp2p_kind`` metadata (None: none)."""
    return with_article(f"{kind} file") if kind else "a safetensors file without Video-P2P's metadata"


def file_kind(path: str | os.PathLike) -> Optional[str]:
    """The ``vp2p_kind`` of a safetensors file, read from its header alone; None for one without it. A file that is
    not readable safetensors raises SafetensorError or OSError."""
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("vp2p_kind")


def load_checked(path: str | os.PathLike, kind: str, what: str = "filename", tensors_needed: Sequence[str] = (),
                 meta_needed: Sequence[str] = ()) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file of ours and check that it holds a ``kind`` (delta / inversion) with the tensors and
    metadata entries its reader needs.

    ``what`` names the input the path came from; every refusal names it, the file and what was expected."""
    path = Path(path)
    expected = f"expected {with_article(kind)} file written by {SAVED_BY.get(kind, 'Video-P2P')}"
    if path.suffix != ".safetensors":
        raise VP2PInputError(f"{what}: {str(path)!r} is not a .safetensors file; {expected}")
    if not path.is_file():
        raise VP2PInputError(f"{what}: {str(path)!r} does not exist; {expected}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            # the header is checked before any tensor is read: a multi-GB checkpoint named by mistake is refused
            # without loading it
            version = meta.get("vp2p_format", FORMAT_VERSION)
            if not version.isdigit() or int(version) > int(FORMAT_VERSION):  # a models folder shared with a newer
                # install
                raise VP2PInputError(f"{what}: {str(path)!r} is in format {version!r} of Video-P2P's files, newer "
                                     f"than the {FORMAT_VERSION!r} this version reads; update the extension, or make "
                                     "the file again")
            found = meta.get("vp2p_kind")
            if found != kind:
                raise VP2PInputError(f"{what}: {str(path)!r} is {describe_kind(found)}, not {with_article(kind)} "
                                     f"file; {expected}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:  # truncated, not safetensors at all, unreadable
        raise VP2PInputError(f"{what}: {str(path)!r} is not a readable safetensors file ({e}); {expected}") from None
    missing = [k for k in tensors_needed if k not in tensors] + [f"metadata {k}" for k in meta_needed if k not in meta]
    if missing:
        raise VP2PInputError(f"{what}: {str(path)!r} lacks {', '.join(missing)}; {expected}")
    return tensors, meta


def meta_json(meta: dict[str, str], key: str, default=None):
    v: Optional[str] = meta.get(key)
    return default if v is None else json.loads(v)
