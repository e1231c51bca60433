"""Where our files live: names typed by a user, confined to ComfyUI's output folder or ``models/vp2p``.

- Save nodes write under the output folder (``output/<name>``).
- Load nodes look in ``models/vp2p`` (and any extra ``vp2p`` folders of extra_model_paths.yaml), then in
  the output folder.
- Caches go to ``models/vp2p/<cache_dir>/<kind>-<hash>.safetensors``.
A name is a relative path: no absolute paths, drive letters, ``..`` or empty parts. Outside ComfyUI the
roots come from ``set_roots`` (tests) or the ``VP2P_HOME`` environment variable.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path, PurePosixPath
from typing import Callable, Optional, TypeVar

import torch

from safetensors import SafetensorError, safe_open

from vp2p_core import VP2PInputError
from vp2p_core.errors import with_article
from vp2p_core.files import atomic_save, check_writable, describe_kind, file_kind
from vp2p_core.text import clip_words

log = logging.getLogger(__name__)
T = TypeVar("T")
SUFFIX = ".safetensors"
_ROOTS: dict[str, list[Path]] = {}


def set_roots(output: Optional[os.PathLike] = None, models: Optional[os.PathLike] = None) -> None:
    """Override the folders (tests, scripts). ``set_roots()`` goes back to ComfyUI's / VP2P_HOME."""
    _ROOTS.clear()
    if output is not None:
        _ROOTS["output"] = [Path(output)]
    if models is not None:
        _ROOTS["models"] = [Path(models)]


def _comfy_roots() -> Optional[dict[str, list[Path]]]:
    try:
        import folder_paths  # ComfyUI's
    except ImportError:
        return None
    if "vp2p" not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path("vp2p", os.path.join(folder_paths.models_dir, "vp2p"))
    return {"output": [Path(folder_paths.get_output_directory())],
            "models": [Path(p) for p in folder_paths.get_folder_paths("vp2p")]}


def roots(kind: str) -> list[Path]:
    """'output' or 'models' folders, first one is where new files go."""
    if kind in _ROOTS:
        return _ROOTS[kind]
    comfy = _comfy_roots()
    if comfy is not None:
        return comfy[kind]
    home = os.environ.get("VP2P_HOME")
    if home:
        return [Path(home) / ("output" if kind == "output" else "models")]
    raise RuntimeError("Video-P2P files: not running in ComfyUI and VP2P_HOME is not set; set it to a folder")


def _relative_parts(name: str, what: str, expected: str) -> list[str]:
    """The parts of a user-typed relative path; a refusal names ``what``, the value and what is ``expected``."""
    if not isinstance(name, str) or not name.strip():
        raise VP2PInputError(f"{what}: got {name!r}; {expected}")
    raw = name.strip().replace("\\", "/")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":") or raw.startswith("~"):
        problem = "is an absolute path"
    elif any(p in ("", ".", "..") for p in raw.split("/")):
        problem = "contains '..', '.' or empty parts"
    elif any(ord(c) < 32 for c in raw):
        problem = "contains control characters"
    else:
        return raw.split("/")
    raise VP2PInputError(f"{what}: {name!r} {problem}; {expected}")


def safe_name(name: str, what: str) -> PurePosixPath:
    """A user-typed file name as a relative path inside one of our folders, with the .safetensors suffix."""
    path = PurePosixPath(*_relative_parts(
        name, what, "expected a file name relative to ComfyUI's output or models/vp2p folder, such as "
        "'vp2p/rabbit.delta.safetensors' (no absolute path, no '..')"))
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    return path


def _inside(root: Path, rel: PurePosixPath) -> Path:
    full = root.joinpath(*rel.parts)
    root_abs = os.path.abspath(root)
    if os.path.commonpath([root_abs, os.path.abspath(full)]) != root_abs:
        raise VP2PInputError(f"file name {str(rel)!r} leaves the folder {root_abs}")
    return full


def save_path(name: str, what: str, kind: str) -> Path:
    """Where a Save node writes ``name``, a ``kind`` file; a folder there, or a file where a folder of the name must
    be, is refused by name (pathlib's FileExistsError or IsADirectoryError before). An existing file of the name is
    replaced only where it is a Video-P2P file of the same kind: a checkpoint or a LoRA saved under output/ by
    another node (which never overwrite) is refused, not lost."""
    path = _inside(roots("output")[0], safe_name(name, what))
    check_writable(path, what)
    if path.is_file():
        try:
            found = file_kind(path)
            what_it_is = describe_kind(found)
        except (SafetensorError, OSError):  # damaged, or not safetensors at all: nothing says it is ours
            found, what_it_is = None, "not a readable safetensors file"
        if found != kind:
            raise VP2PInputError(f"{what}: {str(path)!r} exists and is {what_it_is}, not {with_article(kind)} file "
                                 f"of Video-P2P's; choose another name (a {kind} file of the name is replaced)")
    return path


def load_path(name: str, what: str) -> Path:
    """The file ``name`` names under models/vp2p or output/. Where both hold one, the newer is read, with a
    warning: a Save node writes to output/, and an older copy under models/ must not shadow what it just saved."""
    rel = safe_name(name, what)
    places = roots("models") + roots("output")
    found = [full for full in (_inside(root, rel) for root in places) if full.is_file()]
    if not found:
        raise VP2PInputError(f"{what}: no file {str(rel)!r} in {', '.join(str(p) for p in places)}")
    if len(found) > 1:
        newest = max(found, key=lambda p: p.stat().st_mtime)
        log.warning("Video-P2P: %s %r is in %s; reading the newest, %s", what, str(rel),
                    " and ".join(str(p) for p in found), newest)
        return newest
    return found[0]


def prompt_key(prompt: str) -> str:
    """A prompt as a cache key holds it: its words as CLIP reads them, one space apart (ComfyUI's tokenizer reads a
    trailing newline or a double space as nothing, and lowercases, so they recomputed a cached tuning for the same
    embedding)."""
    return " ".join(clip_words(prompt))


def cache_path(cache_dir: str, kind: str, key: str) -> Optional[Path]:
    """Cache file for ``key``, or None when caching is off (empty cache_dir)."""
    if not cache_dir or not cache_dir.strip():
        return None
    folder = _relative_parts(cache_dir.strip().rstrip("/\\") or cache_dir, "cache_dir",
                             "expected a folder name under models/vp2p such as 'vp2p_cache' (no absolute path, "
                             "no '..'), or nothing for no cache")
    return _inside(roots("models")[0], PurePosixPath(*folder, f"{kind}-{key}{SUFFIX}"))


def tensor_hash(t: torch.Tensor) -> str:
    """Hash of every value (shape and dtype included): cache keys must not collide for different clips."""
    x = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{tuple(x.shape)}|{x.dtype}".encode())
    h.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return h.hexdigest()[:24]


def cache_key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def latent_keys(parts: dict, latents: torch.Tensor) -> tuple[str, tuple[str, torch.Tensor]]:
    """A stage's cache key (``parts`` and the latents' exact bits) and ``cached_stage``'s ``near`` (the key of the
    parts alone, and the latents)."""
    return cache_key(**parts, latents=tensor_hash(latents)), (cache_key(**parts), latents)


STALE_TEMPORARY_S = 24 * 3600  # a cache's temporary file this old was left by a write that never finished


def sweep_stale_temporaries(path: Path, kind: str) -> None:
    """Remove the temporary files that writes of ``kind`` results (and the latents beside them) left in ``path``'s
    folder more than a day ago (a ComfyUI killed while saving a 300 MB delta left them for good); a younger one may
    be another process's write in progress."""
    now = time.time()
    ours = re.compile(rf"{re.escape(kind)}-[0-9a-f-]+(?:{re.escape(SUFFIX)}|{re.escape(NEAR_SUFFIX)})\.[^.]+\.tmp")
    for tmp in path.parent.glob(glob.escape(f"{kind}-") + "*.tmp"):
        if not ours.fullmatch(tmp.name):  # atomic_write's temporaries of cache files, no other file of the folder
            continue
        try:
            if now - tmp.stat().st_mtime > STALE_TEMPORARY_S:
                tmp.unlink()
                log.info("Video-P2P: removed %s, left by a cache write that never finished", tmp)
        except OSError:
            pass


# How far (largest difference, as a share of the latents' largest value) the latents a stage is asked for may be from
# the ones a cached result was made from and still be the same clip: ComfyUI's VAE Encode splits its batch by the
# memory free at the time, and one batch of 8 frames against eight of 1 differed by 1.2e-6 (a CPU); a frame one
# grey level brighter in one pixel moves its latents by about 1e-3.
SAME_LATENTS_TOLERANCE = 1e-4
NEAR_SUFFIX = ".latents"  # beside a cached result (safetensors): the latents it was made from, to match them again


def _near_path(path: Path, kind: str, family: str) -> Path:
    return path.with_name(f"{kind}-{family}-{path.name[len(kind) + 1:-len(SUFFIX)]}{NEAR_SUFFIX}")


def near_match(path: Path, kind: str, family: str, latents: torch.Tensor) -> Optional[Path]:
    """A cached result of this ``family`` (every key part but the latents' exact bits) made from latents within
    SAME_LATENTS_TOLERANCE of ``latents``: its path, or None."""
    x = latents.detach().to("cpu", torch.float32)
    scale = float(x.abs().max().clamp_min(1e-12))
    for near in sorted(path.parent.glob(glob.escape(f"{kind}-{family}-") + "*" + glob.escape(NEAR_SUFFIX))):
        try:
            with safe_open(str(near), framework="pt") as f:
                made = f.get_tensor("latents").float()
        except (SafetensorError, OSError, KeyError):
            continue
        result = near.with_name(f"{kind}-{near.name[len(kind) + len(family) + 2:-len(NEAR_SUFFIX)]}{SUFFIX}")
        if made.shape == x.shape and float((made - x).abs().max()) <= SAME_LATENTS_TOLERANCE * scale and \
                result.is_file():
            return result
    return None


def cached_stage(cache_dir: str, kind: str, key: str, load: Callable[[Path], T],
                 compute: Callable[[], T], near: Optional[tuple[str, torch.Tensor]] = None) -> tuple[T, bool]:
    """A stage's result from the cache (``load``, which checks it fits), or ``compute()`` saved there.

    Returns the result and whether it came from the cache. Empty ``cache_dir``: always computed, nothing saved. A
    cached file that does not load (damaged, or refused by ``load``'s checks) is computed again and replaced, with
    a warning: the key names everything the result depends on, so a file under it that does not fit is no result.

    ``near``: (the key without the latents, the latents). Where no file has this exact key, one made from latents
    equal to these up to float rounding (SAME_LATENTS_TOLERANCE) under the same other key parts is taken: the same
    clip encoded in batches of another size, after a restart with less free memory, missed its cache (a 500-step
    tuning, or a long clip's null-text inversion, again). Each result is saved with its latents beside it for this.
    """
    path = cache_path(cache_dir, kind, key)
    found = path if path is not None and path.is_file() else None
    if found is None and path is not None and near is not None:
        found = near_match(path, kind, *near)
    if found is not None:
        try:
            result = load(found)
        # load_checked turns a damaged file into VP2PInputError; a damaged tensor inside a readable file (a
        # timestep table of the wrong size) fails later, in the reader
        except (VP2PInputError, OSError, ValueError, IndexError, KeyError) as e:  # not RuntimeError: out of memory
            log.warning("Video-P2P: the cached %s %s does not load (%s); computing it again", kind, found, e)
        else:
            log.info("Video-P2P: %s loaded from the cache, %s", kind, found)
            return result, True
    result = compute()
    if path is not None:
        sweep_stale_temporaries(path, kind)
        try:
            result.save(path)
            if near is not None:
                family, latents = near
                atomic_save({"latents": latents.detach().to("cpu", torch.float32).contiguous()},
                            _near_path(path, kind, family), {"vp2p_kind": "latents"})
        except (OSError, SafetensorError) as e:  # a read-only folder or a full disk (safetensors' own error)
            # costs the cache, not the finished result
            log.warning("Video-P2P: could not cache the %s at %s (%s); the result is used as it is, and cache_dir "
                        "'' turns caching off", kind, path, e)
        else:
            log.info("Video-P2P: %s cached at %s", kind, path)
    return result, False
