"""Write a small h264 mp4 (a disc moving over a gradient) for the integration test. Needs PyAV (ComfyUI has it).

    python make_clip.py OUT.mp4 [frames] [size]
"""
import sys

import av
import numpy as np


def main(path, frames=8, size=64):
    frames, size = int(frames), int(size)
    out = av.open(path, mode="w")
    stream = out.add_stream("h264", rate=8)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(frames):
        img = np.zeros((size, size, 3), np.uint8)
        img[..., 1] = 80 + (yy * 100 // size)
        cx, cy = size // 4 + i * size // (2 * frames), size // 2
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (size // 6) ** 2
        img[disc] = (230, 230, 220)
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
