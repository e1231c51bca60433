"""Host hooks: how the algorithm reaches device, progress, interrupt and model loading.

The precision is the model's own: the UNet computes in its weights' dtype and the latents stay float32
(``vp2p_core.inflation.video_forward``), so a host has no dtype to set.

ComfyUI plugs its model management, progress bar and stop button in here; the CLI and the tests
use the plain-torch defaults.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

log = logging.getLogger(__name__)


class Interrupted(RuntimeError):
    """Raised by the default interrupt check when the host asked to stop."""


def _noop_progress(step: int, total: int, preview: Optional[torch.Tensor]) -> None:
    return None


def _noop_interrupt() -> None:
    return None


_LIBC = None


def release_freed_memory() -> None:
    """Hand memory that a finished stage freed back to the system: the CUDA cache on a GPU; on Linux, glibc's free
    heap pages (malloc_trim), which a CPU process otherwise keeps, so that they add to every later stage's peak
    (BENCHMARKS.md, "Side by side with the official pipeline": 686 -> 608 MiB on the tiny model)."""
    global _LIBC
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are one: "cuda" is the current CUDA device (torch.cuda.set_device), the first if none."""
    def index(d: torch.device) -> int:
        if d.index is not None:
            return d.index
        return torch.cuda.current_device() if d.type == "cuda" and torch.cuda.is_available() else 0

    return a.type == b.type and index(a) == index(b)


@dataclass
class Host:
    """Plain callables a host provides; every field has a plain-torch default."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: Callable[[int, int, Optional[torch.Tensor]], None] = _noop_progress
    interrupt: Callable[[], None] = _noop_interrupt
    load: Optional[Callable[[torch.nn.Module], None]] = None
    release: Callable[[], None] = release_freed_memory  # after each stage of pipeline.run
    log_every_s: float = 10.0
    free_memory: Optional[Callable[[], Optional[int]]] = None  # bytes free on the device (ComfyUI: its own count)

    def available_memory(self) -> Optional[int]:
        """Bytes free on the compute device: the host's count, else CUDA's; None where it is not known (a CPU)."""
        if self.free_memory is not None:
            return self.free_memory()
        if self.device.type == "cuda" and torch.cuda.is_available():  # free, and what torch's cache holds unused
            cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            return int(torch.cuda.mem_get_info(self.device)[0] + cached)
        return None

    def load_module(self, module: torch.nn.Module) -> None:
        """Put a module on the compute device (ComfyUI: load_models_gpu)."""
        if self.load is not None:
            self.load(module)
        else:
            module.to(self.device)

    def loop(self, total: int, what: str) -> "ProgressLoop":
        return ProgressLoop(self, total, what)

    def stage(self, done_before: int, overall: int) -> "Host":
        """This host for one stage of a longer run: its progress counts on from ``done_before`` out of
        ``overall``, so that one progress bar fills once over all the stages."""
        outer = self.progress
        return replace(self, progress=lambda step, total, preview: outer(done_before + step, overall, preview))


class ProgressLoop:
    """Reports progress to the host and to the log, and checks for interruption at every step."""

    def __init__(self, host: Host, total: int, what: str):
        self.host, self.total, self.what = host, total, what
        self.start = time.perf_counter()
        self.last_log = self.start

    def step(self, done: int, preview: Optional[torch.Tensor] = None, **figures) -> None:
        self.host.interrupt()
        self.host.progress(done, self.total, preview)
        now = time.perf_counter()
        if now - self.last_log >= self.host.log_every_s or done == self.total:
            self.last_log = now
            extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
            log.info("%s %d/%d (%.1fs) %s", self.what, done, self.total, now - self.start, extra)
