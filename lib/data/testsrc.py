"""Long test videos with known hard cuts, from FFmpeg's lavfi sources through PyAV's filter graph.

Why: scene cutting needs inputs whose true cuts are known, in any length, without downloading footage. Each
segment is one lavfi source (``testsrc``, ``mandelbrot``, ``cellauto`` ...) rendered for a number of frames; the
video is the segments back to back, so every segment boundary is a hard cut at a known frame. Frames are generated
and encoded one at a time: memory does not grow with the video's length (a 30-minute input costs the same memory
as a 10-second one).

Some sources move (``testsrc``'s scrolling gradient, ``mandelbrot``'s zoom, ``life``/``cellauto``), some are still
(``smptebars``, ``rgbtestsrc``): the still ones are what a ``data.min_motion`` filter should catch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av

MOVING_SOURCES = ("testsrc", "testsrc2", "mandelbrot", "life", "cellauto")
STILL_SOURCES = ("smptebars", "rgbtestsrc")
SOURCES = MOVING_SOURCES + STILL_SOURCES


def lavfi_frames(source: str, width: int, height: int, fps: int, count: int) -> Iterator[av.VideoFrame]:
    """``count`` yuv420p frames of lavfi source ``source`` at width x height and ``fps``."""
    graph = av.filter.Graph()
    src = graph.add(source, f"size={width}x{height}:rate={fps}")
    fmt = graph.add("format", "pix_fmts=yuv420p")
    sink = graph.add("buffersink")
    src.link_to(fmt)
    fmt.link_to(sink)
    graph.configure()
    for _ in range(count):
        yield sink.pull()


def write_cut_video(
    path: str | Path, segments: Sequence[tuple[str, int]], width: int = 64, height: int = 48, fps: int = 24
) -> list[float]:
    """Encode the segments (lavfi source, frames) back to back as H.264 MP4; returns the true cut times (s).

    Cut k is the first frame of segment k + 1, at (frames before it) / fps seconds.
    """
    cuts, n = [], 0
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for k, (source, count) in enumerate(segments):
            if k:
                cuts.append(n / fps)
            for frame in lavfi_frames(source, width, height, fps, count):
                frame.pts, frame.time_base = n, Fraction(1, fps)
                container.mux(stream.encode(frame))
                n += 1
        container.mux(stream.encode())
    return cuts
