"""Which frames of a video a clip takes (Tune-A-Video's sampling: a start, a count, a stride), read as they come:
a long video is never decoded whole (ComfyUI's Get Video Components stacks every frame of the file first, about
7.5 GB for ten seconds of 1080p)."""
from __future__ import annotations

import logging
from fractions import Fraction
from typing import Callable, Iterable, Iterator, Optional, TypeVar

import numpy as np

from .errors import VP2PInputError
from .options import FramesOptions

T = TypeVar("T")
log = logging.getLogger(__name__)


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


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """A decoded frame as players show it: turned by its display matrix's rotation (PyAV's ``VideoFrame.rotation``,
    degrees counterclockwise; a phone's portrait video is stored landscape with -90), as newer ComfyUI's Get Video
    Components turns it (0.3.64's does not: the frames came out sideways). A rotation that is not a quarter turn is
    left undone, with a warning."""
    if not rotation:
        return image
    if rotation % 90:
        log.warning("Video-P2P: a video frame's rotation of %s degrees is not a quarter turn; frames kept as stored",
                    rotation)
        return image
    return np.ascontiguousarray(np.rot90(image, k=rotation // 90))


def read_video(source, options: FramesOptions, what: str = "video", interrupt: Optional[Callable[[], None]] = None,
               on_take: Optional[Callable[[int], None]] = None) -> tuple[list[np.ndarray], Fraction]:
    """The frames ``options`` picks from a video file (a path or a file object), decoded with PyAV (ComfyUI's video
    library) no further than the last one taken, as upright [H, W, 3] uint8 RGB, and the stream's average frame
    rate. ``interrupt()`` is called for every frame decoded, taken or not (a stop button that answers while frames
    before ``start_frame`` are skipped). Errors name ``what``."""
    import av  # ComfyUI's dependency, and the tests'; not vp2p_core's own

    def decoded(container) -> Iterator:
        for frame in container.decode(video=0):
            if interrupt is not None:
                interrupt()
            yield frame

    try:
        with av.open(source, mode="r") as container:
            if not container.streams.video:
                raise VP2PInputError(f"{what}: has no video stream")
            stream = container.streams.video[0]
            rate = Fraction(stream.average_rate) if stream.average_rate else Fraction(1)
            seekable = options.start_frame >= SEEK_FROM and stream.codec_context.name in ONE_FRAME_PER_PACKET
            wanted = seek_to_start(container, stream, options) if seekable else None
            if wanted is None:
                frames = take_frames(decoded(container), options, what, on_take=on_take)
            else:
                frames = take_by_time(decoded(container), wanted, what, on_take=on_take)
            taken = [upright(frame.to_ndarray(format="rgb24"), getattr(frame, "rotation", 0)) for frame in frames]
    except av.error.FFmpegError as e:
        raise VP2PInputError(f"{what}: could not be read as a video ({type(e).__name__}: {e})") from None
    return taken, rate


SEEK_FROM = 48  # a start_frame this far in is reached by seeking; nearer, decoding from the first frame costs little
# codecs whose every packet decodes to one shown frame, so that the n-th timestamp is the n-th frame (VP8 in WebM may
# carry hidden alt-ref frames in packets of their own); others count frames from the first
ONE_FRAME_PER_PACKET = frozenset({"h264", "hevc", "av1", "vp9", "mpeg4", "mpeg2video", "mjpeg", "prores", "dnxhd",
                                  "ffv1", "png", "rawvideo", "huffyuv", "utvideo"})
REORDER_MARGIN = 32  # packets read past the last frame taken: presentation order differs from decoding order by
# less than this (B-frames)


def seek_to_start(container, stream, options: FramesOptions) -> Optional[list[int]]:
    """Seek ``container`` to the keyframe before the clip's first frame and return the timestamps of the frames the
    clip takes, found from the packets alone (reading them costs no decoding): the frames of a stream in presentation
    order are its packets sorted by timestamp, so the n-th frame is the n-th timestamp, at any frame rate, variable
    included. None, with the container rewound, where a packet has no timestamp (some AVI) or the stream is too
    short: then frames are counted as they are decoded."""
    end = last_frame(options)
    stamps = []
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's flush packet
            continue
        if packet.pts is None:
            stamps = None
            break
        stamps.append(packet.pts)
        if len(stamps) > end + REORDER_MARGIN:
            break
    if stamps is not None:
        stamps.sort()
    if stamps is None or len(stamps) <= end or len(set(stamps)) != len(stamps):
        container.seek(0, stream=stream)  # as read before: from the first frame
        return None
    wanted = stamps[options.start_frame:end + 1:options.frame_stride]
    container.seek(wanted[0], stream=stream, backward=True, any_frame=False)
    return wanted


def take_by_time(frames: Iterable, wanted: list[int], what: str,
                 on_take: Optional[Callable[[int], None]] = None) -> list:
    """The decoded ``frames`` whose timestamps are ``wanted`` (``seek_to_start``'s), read no further than the last."""
    want, taken = set(wanted), []
    for frame in frames:
        if frame.pts in want:
            taken.append(frame)
            if on_take is not None:
                on_take(len(taken))
        if frame.pts is not None and frame.pts >= wanted[-1]:
            break
    if len(taken) != len(wanted):  # a decoder that dropped or re-stamped frames after the seek
        raise VP2PInputError(f"{what}: {len(wanted) - len(taken)} of the frames to take were not found after seeking "
                             "to them; re-encode the video (e.g. to H.264) or take frames nearer its start")
    return taken
