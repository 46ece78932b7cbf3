"""Scene cutting of raw videos (``data.source: raw``): list them, then one map-task element per video."""

from typing import NamedTuple

from flytekit import Cache, Resources, task
from pandera.typing import DataFrame

from data_schemas.raw import SceneWindow
from lib.config import DataConfig
from lib.data.raw import RawVideo, cut_video, list_raw_videos
from lib.data.scenes import ScenePlan
from tasks.image import TASK_IMAGE


class RawListing(NamedTuple):
    videos: list[RawVideo]
    plan: ScenePlan


@task(container_image=TASK_IMAGE, requests=Resources(cpu="1", mem="1Gi"), retries=1)
def list_raw(cfg: DataConfig) -> RawListing:
    """The videos of ``data.raw`` (none for the other sources) and how to cut them. Not cached: a folder or glob
    listing must see files added since the last run."""
    videos = list_raw_videos(cfg.raw, cfg.columns) if cfg.source == "raw" else []
    return RawListing(videos, ScenePlan.from_config(cfg))


@task(container_image=TASK_IMAGE, cache=Cache(version="cut-v1"), requests=Resources(cpu="1", mem="2Gi"), retries=1)
def cut_scenes(video: RawVideo, plan: ScenePlan) -> DataFrame[SceneWindow]:
    """One video's clip windows and refusals. Cached on (video, plan): a file changed under the same path needs a new
    path; a quality threshold or the clip size outside the plan does not re-run detection."""
    return cut_video(video, plan)
