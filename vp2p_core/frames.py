"""Which frames of a video a clip takes (Tune-A-Video's sampling: a start, a count, a stride), read as they come:
a long video is never decoded whole (ComfyUI's Get Video Components stacks every frame of the file first, about
7.5 GB for ten seconds of 1080p)."""
from __future__ import annotations

from typing import Callable, Iterable, Optional, TypeVar

from .errors import VP2PInputError
from .options import FramesOptions

T = TypeVar("T")


def last_frame(options: FramesOptions) -> int:
    """Index of the last frame the clip takes."""
    return options.start_frame + (options.frames - 1) * options.frame_stride


def take_frames(frames: Iterable[T], options: FramesOptions, what: str = "video",
                on_take: Optional[Callable[[int], None]] = None) -> list[T]:
    """The frames ``options`` picks from ``frames`` (an iterator is read no further than the last one it takes);
    too short a video is refused naming ``what`` and the settings. ``on_take(n)`` after the n-th frame taken (a
    progress bar, a stop button)."""
    taken, count = [], 0
    end = last_frame(options)
    for i, frame in enumerate(frames):
        count = i + 1
        if i >= options.start_frame and (i - options.start_frame) % options.frame_stride == 0:
            taken.append(frame)
            if on_take is not None:
                on_take(len(taken))
        if i >= end:
            return taken
    raise VP2PInputError(f"{what}: has {count} frames; frames {options.frames} from start_frame "
                         f"{options.start_frame} at frame_stride {options.frame_stride} need {end + 1}")
