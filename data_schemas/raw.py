"""Tables of scene cutting (``data.source: raw``): what one long video gave, window by window."""

import pandera.pandas as pa
from pandera.typing import Series

from data_schemas.ingest import QUARANTINE_REASONS


class SceneWindow(pa.DataFrameModel):
    """One row per clip window cut from a raw video, or per refusal (a video or scene that gives no window).

    A window row (``reason == ""``) is a manifest row for the existing manifest ingestion: ``path``, ``caption``,
    ``clip_id``, ``start``/``end`` in seconds. A refusal row carries a QuarantineRecord reason and detail; ``scene``
    is -1 when the whole video is refused. ``scene_start``/``scene_end`` are the detected scene's bounds (NaN when
    the video never got that far), kept so detection can be scored against known cuts.
    """

    video_row: Series[int] = pa.Field(ge=0)  # position of the video in the listing of data.raw
    video_id: Series[str]
    path: Series[str]
    clip_id: Series[str]
    caption: Series[str]  # "" on refusal rows
    scene: Series[int] = pa.Field(ge=-1)
    scene_start: Series[float] = pa.Field(nullable=True)
    scene_end: Series[float] = pa.Field(nullable=True)
    start: Series[float] = pa.Field(nullable=True)
    end: Series[float] = pa.Field(nullable=True)
    reason: Series[str] = pa.Field(isin=["", *QUARANTINE_REASONS])
    detail: Series[str]

    class Config:
        strict = True
        coerce = True
