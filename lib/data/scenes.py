"""Scene detection in long videos and the clip windows each scene gives.

Why scenes first: a clip window that straddles a hard cut teaches a video model that objects teleport. PySceneDetect
finds the cuts; every scene then gives up to ``data.windows_per_scene`` disjoint windows of ``data.frames`` frames at
``data.fps``, which the existing manifest ingestion decodes like any manifest row with ``start``/``end``.

Detection runs on PyAV (scenedetect's ``VideoStreamAv``, opened directly so a failure is never retried through
another backend) in one streaming pass: scenedetect's decode thread hands frames through a queue of at most four,
the detector keeps only its small window of past frames, and frames are downscaled to about
``data.scene_detect_width`` pixels wide before the detector sees them. Memory is therefore bounded by a few frames
whatever the video's length, and the detector's cost by the downscaled size.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import BinaryIO

from scenedetect import AdaptiveDetector, ContentDetector, SceneManager
from scenedetect.backends.pyav import VideoStreamAv

from lib.config import DataConfig

log = logging.getLogger(__name__)

# Windows keep one source frame clear of each detected cut: a detector may place a cut one frame early or late,
# and the frame on screen at a window's first target must belong to the scene.
CUT_MARGIN_FRAMES = 1


@dataclass(frozen=True)
class ScenePlan:
    """The fields of ``DataConfig`` that decide how a raw video is cut, and nothing else: a map-task element is
    cached on it, so tuning a quality threshold does not re-run detection over hours of video."""

    detector: str = "content"
    threshold: float = 27.0
    detect_width: int = 256
    min_scene_seconds: float = 0.5
    max_scene_seconds: float = 60.0
    windows_per_scene: int = 1
    frames: int = 8
    fps: float = 8.0
    max_source_pixels: int = 4096 * 4096

    @classmethod
    def from_config(cls, cfg: DataConfig) -> ScenePlan:
        return cls(
            detector=cfg.scene_detector,
            threshold=cfg.scene_threshold,
            detect_width=cfg.scene_detect_width,
            min_scene_seconds=cfg.min_scene_seconds,
            max_scene_seconds=cfg.max_scene_seconds,
            windows_per_scene=cfg.windows_per_scene,
            frames=cfg.frames,
            fps=cfg.fps,
            max_source_pixels=cfg.max_source_pixels,
        )

    @property
    def window_seconds(self) -> float:
        """Time one clip covers: ``frames`` targets 1/fps apart, the last one held for 1/fps."""
        return self.frames / self.fps


@dataclass(frozen=True)
class DetectedScenes:
    """Scene bounds in seconds ([start, end), in order, covering the decoded video) and the source's timing."""

    scenes: list[tuple[float, float]]
    source_fps: float
    width: int
    height: int
    frames_read: int


class SceneOpenError(ValueError):
    """A raw video that cannot be scene-cut; ``reason`` is a QuarantineRecord reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _detector(plan: ScenePlan) -> ContentDetector | AdaptiveDetector:
    if plan.detector == "adaptive":
        return AdaptiveDetector(adaptive_threshold=plan.threshold, min_scene_len=plan.min_scene_seconds)
    return ContentDetector(threshold=plan.threshold, min_scene_len=plan.min_scene_seconds)


def detect_scenes(source: str | BinaryIO, plan: ScenePlan, name: str = "") -> DetectedScenes:
    """Cut one video into scenes in a single streaming pass.

    Args:
        source: a local path or an open binary file (e.g. from ``fsspec.open``).
        plan: detector, threshold, downscale width and minimum scene length.
        name: the video's name for scenedetect's messages (needed when ``source`` is a file object).

    Returns:
        DetectedScenes; a video without cuts is one scene spanning all of it.

    Raises:
        SceneOpenError: ``frame_too_large`` (passes ``max_source_pixels``) or ``unreadable`` (no frame decoded).
        Errors of the container or codec (``av.error.FFmpegError``, ``scenedetect`` ``VideoOpenFailure``) propagate.
    """
    video = VideoStreamAv(source, name=name or None, suppress_output=True)
    width, height = video.frame_size
    if width * height > plan.max_source_pixels:
        raise SceneOpenError("frame_too_large", f"{width}x{height} passes {plan.max_source_pixels} pixels")
    manager = SceneManager()
    manager.auto_downscale = False
    manager.downscale = max(1, int(width // plan.detect_width))
    manager.add_detector(_detector(plan))
    frames_read = manager.detect_scenes(video=video)
    if frames_read == 0:
        raise SceneOpenError("unreadable", "no frame could be decoded")
    scenes = [(start.seconds, end.seconds) for start, end in manager.get_scene_list(start_in_scene=True)]
    return DetectedScenes(scenes, float(video.frame_rate), width, height, frames_read)


def scene_windows(start: float, end: float, plan: ScenePlan, source_fps: float) -> list[tuple[float, float]]:
    """Disjoint clip windows (start, end) in seconds inside the scene [start, end).

    A scene longer than ``max_scene_seconds`` is split into equal consecutive pieces no longer than that, and each
    piece gives up to ``windows_per_scene`` windows, spread evenly with equal gaps. Windows stay
    ``CUT_MARGIN_FRAMES`` source frames clear of the scene's bounds. An empty list means the scene is too short
    for one window (or shorter than ``min_scene_seconds``).
    """
    if end - start < plan.min_scene_seconds:
        return []
    margin = CUT_MARGIN_FRAMES / source_fps if source_fps > 0 else 0.0
    pieces = max(1, math.ceil((end - start) / plan.max_scene_seconds))
    length = (end - start) / pieces
    width = plan.window_seconds
    out = []
    for p in range(pieces):
        lo, hi = start + p * length + margin, start + (p + 1) * length - margin
        n = min(plan.windows_per_scene, int((hi - lo) // width))
        gap = (hi - lo - n * width) / (n + 1)
        out += [(lo + gap * (i + 1) + width * i, lo + (gap + width) * (i + 1)) for i in range(n)]
    return out
