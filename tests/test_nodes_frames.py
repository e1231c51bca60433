"""Video Frames: Tune-A-Video's frame sampling from a VIDEO, decoded no further than the last frame taken."""
from __future__ import annotations

import pytest
import torch

from comfy_nodes import latest, run
from nodes.nodes_frames import VideoP2PVideoFrames
from vp2p_core import VP2PInputError
from vp2p_core.frames import take_frames
from vp2p_core.options import FramesOptions

torch.set_num_threads(1)


def write_clip(path, images, rate: int = 8, codec: str = "h264", options=None, millis=None):
    """Encode uint8 RGB ``images`` [H, W, 3] with PyAV at ``rate`` fps (or at ``millis``' timestamps, in ms: a
    variable frame rate); returns ``path``."""
    import fractions

    import av

    out = av.open(str(path), mode="w")
    stream = out.add_stream(codec, rate=rate, options=options or {})
    stream.height, stream.width = images[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    if millis is not None:
        stream.codec_context.time_base = stream.time_base = fractions.Fraction(1, 1000)
    for i, img in enumerate(images):
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        if millis is not None:
            frame.pts, frame.time_base = millis[i], fractions.Fraction(1, 1000)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return path


def grey_clip(path, frames: int = 8, size: int = 32, rate: int = 8):
    """An h264 mp4 whose frame i is the flat grey 10 + 20 i (flat frames survive the codec within a level or two)."""
    import numpy as np

    return write_clip(path, [np.full((size, size, 3), 10 + 20 * i, np.uint8) for i in range(frames)], rate=rate)


def test_take_frames_picks_start_count_and_stride_and_reads_no_further():
    read = []

    def stream():
        for i in range(100):
            read.append(i)
            yield i

    assert take_frames(stream(), FramesOptions(frames=3, start_frame=5, frame_stride=4)) == [5, 9, 13]
    assert read == list(range(14))  # stopped at the last frame taken
    taken = []
    assert take_frames(range(8), FramesOptions(frames=8), on_take=taken.append) == list(range(8))
    assert taken == list(range(1, 9))  # after each frame taken: its count (the progress bar's step)
    with pytest.raises(VP2PInputError, match=r"^video: has 8 frames; frames 4 from start_frame 2 at frame_stride 2 "
                                             r"need 9$"):
        take_frames(range(8), FramesOptions(frames=4, start_frame=2, frame_stride=2))


def test_video_frames_takes_tune_a_videos_sample_of_a_video_file(tmp_path):
    """Frames 2, 4 and 6 of an 8-frame clip at 8 fps: their greys, at the video's size, and 4 fps; a clip too
    short for the settings is refused naming them."""
    video = latest.InputImpl.VideoFromFile(str(grey_clip(tmp_path / "grey.mp4")))
    images, fps = run(VideoP2PVideoFrames, video=video, frames=3, start_frame=2, frame_stride=2).args
    assert images.shape == (3, 32, 32, 3) and images.dtype == torch.float32 and fps == 4.0
    levels = (images.mean(dim=(1, 2, 3)) * 255).tolist()
    assert all(abs(got - want) < 3 for got, want in zip(levels, (50, 90, 130))), levels
    first, fps = run(VideoP2PVideoFrames, video=video).args  # the defaults: the first 8 frames, every one
    assert first.shape[0] == 8 and fps == 8.0
    torch.testing.assert_close(first[2::2][:3], images)
    with pytest.raises(VP2PInputError, match="^video: has 8 frames; frames 9 from start_frame 0"):
        run(VideoP2PVideoFrames, video=video, frames=9)
    with pytest.raises(VP2PInputError, match="^frame_stride: expected a value in"):
        run(VideoP2PVideoFrames, video=video, frame_stride=0)


def test_video_frames_reads_a_video_made_in_the_graph(tmp_path):
    """A VIDEO made by Create Video (frames in memory, which ComfyUI 0.3.64 cannot stream: no container format) is
    taken from its frames."""
    from fractions import Fraction

    frames = torch.linspace(0.1, 0.9, 6).view(6, 1, 1, 1).expand(6, 32, 32, 3).contiguous()
    video = latest.InputImpl.VideoFromComponents(latest.Types.VideoComponents(images=frames,
                                                                               frame_rate=Fraction(12)))
    images, fps = run(VideoP2PVideoFrames, video=video, frames=2, start_frame=1, frame_stride=3).args
    assert images.shape == (2, 32, 32, 3) and fps == 4.0
    torch.testing.assert_close(images.mean(dim=(1, 2, 3)), frames[1::3].mean(dim=(1, 2, 3)), atol=0, rtol=0)


def turned_clip(path, rotation_matrix: tuple):
    """An h264 mp4 of 3 frames, 48 wide and 32 high, white on the left half, black on the right, whose track header
    carries ``rotation_matrix`` (a, b, c, d of its display matrix, as phones write it for portrait video)."""
    import struct

    import numpy as np

    img = np.zeros((32, 48, 3), np.uint8)
    img[:, :24] = 255
    write_clip(path, [img] * 3)
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    matrix = at + 8 + (32 if data[at + 4] == 1 else 20) + 16  # version/flags, times, ids, layer/volume
    a, b, c, d = rotation_matrix
    data[matrix:matrix + 36] = struct.pack(">9i", a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))
    return path


def test_a_phone_videos_frames_come_upright(tmp_path):
    """A video stored landscape with a quarter-turn display matrix (as phones record portrait) comes out as players
    show it: 32 wide and 48 high, the stored frame's white left half on top (turned clockwise). ComfyUI 0.3.64's own
    Get Video Components gave the stored, sideways frames. The demo's --clip reads it the same way."""
    from vp2p_core.frames import read_video, upright
    from vp2p_world.demo import load_clip

    stored = torch.arange(6).view(2, 3).numpy()
    assert upright(stored, 0) is stored and (upright(stored, 45) == stored).all()
    assert upright(stored, -90).tolist() == [[3, 0], [4, 1], [5, 2]]  # clockwise
    assert upright(stored, 90).tolist() == [[2, 5], [1, 4], [0, 3]] and upright(stored, 180).tolist() == [[5, 4, 3],
                                                                                                         [2, 1, 0]]
    path = turned_clip(tmp_path / "portrait.mp4", (0, 1, -1, 0))
    frames, _ = read_video(str(path), FramesOptions(frames=1))
    assert frames[0].shape == (48, 32, 3)
    images, _ = run(VideoP2PVideoFrames, video=latest.InputImpl.VideoFromFile(str(path)), frames=3).args
    assert images.shape == (3, 48, 32, 3)
    top, bottom = images[:, :20].mean(), images[:, 28:].mean()
    assert top > 0.9 and bottom < 0.1, (top, bottom)
    demo_frames, _, _ = load_clip(str(path), FramesOptions(frames=2), 32)
    assert demo_frames[:, :12].mean() > 0.9 and demo_frames[:, 20:].mean() < 0.1


def test_the_stop_button_answers_while_frames_before_start_frame_are_skipped(tmp_path):
    """Every frame decoded asks the stop button, taken or not (a start_frame near the end of a long video decoded
    for minutes without asking)."""
    from vp2p_core.frames import read_video

    asked = []
    frames, rate = read_video(str(grey_clip(tmp_path / "grey.mp4")), FramesOptions(frames=1, start_frame=6),
                              interrupt=lambda: asked.append(1))
    assert len(frames) == 1 and rate == 8 and len(asked) == 7  # frames 0..6

    def stop():
        raise InterruptedError("stopped")

    with pytest.raises(InterruptedError):
        read_video(str(tmp_path / "grey.mp4"), FramesOptions(frames=1, start_frame=6), interrupt=stop)


def test_a_late_start_frame_is_reached_by_seeking_to_the_same_frames(tmp_path, monkeypatch):
    """A start_frame far into a video seeks to the keyframe before it (decoding a few dozen frames, not all before
    it) and takes the very frames counting from the first would: B-frames, a keyframe every 20 frames and a
    variable frame rate (the n-th frame is the n-th timestamp). A video too short is refused as before."""
    import numpy as np

    from vp2p_core import frames as core_frames

    images, millis, t = [], [], 0
    for i in range(130):
        y, x = np.mgrid[0:32, 0:32]
        images.append(np.stack([(x * 7 + i * 20) % 256, (y * 5 + i * 3) % 256, (x + y + i * 11) % 256],
                               -1).astype(np.uint8))
        millis.append(t)
        t += 20 if i % 3 else 70
    path = write_clip(tmp_path / "vfr.mkv", images, rate=25, codec="libx264", millis=millis,
                      options={"x264-params": "bframes=3:keyint=20:open-gop=1"})
    pick = FramesOptions(frames=6, start_frame=97, frame_stride=5)  # frames 97 .. 122
    decoded = []
    sought, _ = core_frames.read_video(str(path), pick, interrupt=lambda: decoded.append(1))
    monkeypatch.setattr(core_frames, "SEEK_FROM", 10 ** 9)
    counted, _ = core_frames.read_video(str(path), pick)
    assert len(sought) == 6 and all(np.array_equal(a, b) for a, b in zip(sought, counted))
    assert len(decoded) < 60  # from the keyframe before frame 97 (123 counting from the first)
    monkeypatch.setattr(core_frames, "SEEK_FROM", 48)
    with pytest.raises(VP2PInputError, match="^video: has 130 frames; frames 6 from start_frame 120 at frame_stride"):
        core_frames.read_video(str(path), FramesOptions(frames=6, start_frame=120, frame_stride=5))
