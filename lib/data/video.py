"""Video files in and out with PyAV: decode a time window into T frames at a target fps, write MP4/GIF.

Frames are resized with ffmpeg's scaler (inside PyAV) so the shorter side matches the target, then
centre-cropped: the aspect ratio is kept and nothing is stretched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
from PIL import Image


class VideoDecodeError(ValueError):
    """A video that cannot give the clip asked of it. ``reason`` is a QuarantineRecord reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedClip:
    """A decoded window and how much of it sample-and-hold filled."""

    frames: np.ndarray  # uint8 [T, H, W, 3]
    held: int  # frames repeating the source frame of the one before: > 0 when the source is slower than the fps
    source_fps: float  # the stream's average frame rate, 0.0 when the container does not give one


def _resize_crop(frame: av.VideoFrame, height: int, width: int) -> np.ndarray:
    scale = max(height / frame.height, width / frame.width)
    h2, w2 = max(height, round(frame.height * scale)), max(width, round(frame.width * scale))
    rgb = frame.reformat(width=w2, height=h2, format="rgb24").to_ndarray()
    top, left = (h2 - height) // 2, (w2 - width) // 2
    return rgb[top : top + height, left : left + width]


def decode_clip(
    source: str | Path | BinaryIO,
    frames: int,
    fps: float,
    height: int,
    width: int,
    start: float = 0.0,
    end: float | None = None,
    max_source_pixels: int = 4096 * 4096,
) -> np.ndarray:
    """Decode ``frames`` frames spaced 1/fps apart from ``start`` seconds: uint8 [T, H, W, 3] (``decode_window``)."""
    return decode_window(source, frames, fps, height, width, start, end, max_source_pixels).frames


def decode_window(
    source: str | Path | BinaryIO,
    frames: int,
    fps: float,
    height: int,
    width: int,
    start: float = 0.0,
    end: float | None = None,
    max_source_pixels: int = 4096 * 4096,
) -> DecodedClip:
    """Decode ``frames`` frames spaced 1/fps apart from ``start`` seconds, counting the held ones.

    Each target time takes the last decoded frame at or before it (sample-and-hold), so a source slower than
    ``fps`` repeats frames rather than failing; ``DecodedClip.held`` counts the repeats. The window must lie inside
    the video and inside [start, end].

    Raises:
        VideoDecodeError: with a quarantine reason (unreadable, no_video_stream, too_few_frames, frame_too_large).
    """
    targets = start + np.arange(frames) / fps
    if end is not None and targets[-1] > end:
        raise VideoDecodeError("too_few_frames", f"window [{start}, {end}] s holds < {frames} frames at {fps} fps")
    try:
        container = av.open(source, mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError("unreadable", f"cannot open container: {exc}") from exc
    with container:
        if not container.streams.video:
            raise VideoDecodeError("no_video_stream", "container has no video stream")
        stream = container.streams.video[0]
        pixels = (stream.codec_context.width or 0) * (stream.codec_context.height or 0)
        if pixels > max_source_pixels:
            raise VideoDecodeError(
                "frame_too_large",
                f"{stream.codec_context.width}x{stream.codec_context.height} passes {max_source_pixels} pixels",
            )
        if start > 0 and stream.time_base:
            container.seek(int(start / stream.time_base), stream=stream)  # lands on the keyframe before start
        source_fps = float(stream.average_rate) if stream.average_rate else 0.0
        frame_dur = 1.0 / source_fps if source_fps else 0.0
        out = np.empty((frames, height, width, 3), dtype=np.uint8)
        filled, held, last, last_t, last_used = 0, 0, None, -np.inf, False
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                while filled < frames and last is not None and targets[filled] < frame.time - 1e-6:
                    out[filled] = last  # the frame on screen at this target time
                    held += last_used  # ... already shown at the target before: a held frame
                    filled, last_used = filled + 1, True
                if filled == frames:
                    break
                last, last_t, last_used = _resize_crop(frame, height, width), frame.time, False
        except (av.error.FFmpegError, ValueError) as exc:
            raise VideoDecodeError("unreadable", f"decoding failed after {filled} frames: {exc}") from exc
    while filled < frames and last is not None and targets[filled] < last_t + frame_dur - 1e-6:
        out[filled] = last  # the final frame stays on screen for one frame duration
        held += last_used
        filled, last_used = filled + 1, True
    if filled < frames:
        raise VideoDecodeError("too_few_frames", f"decoded {filled}/{frames} frames from {start} s at {fps} fps")
    return DecodedClip(out, held, source_fps)


def write_mp4(path: str | Path, video: np.ndarray, fps: float = 8.0) -> Path:
    """Write uint8 [T, H, W, 3] as H.264 MP4 (even sizes are padded by the encoder's needs)."""
    path = Path(path)
    t, h, w, _ = video.shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = w + w % 2, h + h % 2
        stream.pix_fmt = "yuv420p"
        for frame in video:
            padded = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_gif(path: str | Path, video: np.ndarray, fps: float = 8.0, scale: int = 4) -> Path:
    """Write uint8 [T, H, W, 3] as a looping GIF, upscaled ``scale``x so tiny clips are visible."""
    path = Path(path)
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in video]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path
