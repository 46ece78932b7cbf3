"""Tables of the ingestion stage: the manifest users write, the clips we keep, and the rows we refuse."""

import pandera.pandas as pa
from pandera.typing import Series

# The role of every clip (ClipIndex.role), assigned once at ingestion (lib.data.split says why and how)
TRAIN, VALIDATION, REFERENCE, PROMPT = "train", "validation", "reference", "prompt"
ROLES = (TRAIN, VALIDATION, REFERENCE, PROMPT)

SHA256_PATTERN = r"^[0-9a-f]{64}$"  # a file's sha256 as lowercase hex

# The manifest's columns (VideoManifest): path and caption are required; the config names them in data.columns.
MANIFEST_COLUMNS = ("path", "caption", "clip_id", "start", "end")
REQUIRED_COLUMNS = ("path", "caption")
# The built-in source's scene families (ClipAttributes.scene), in the order they join its world; the first
# DEFAULT_FAMILIES are the default world. What each family owns is lib.data.procedural.FAMILIES; the names live
# here, below the config, which checks data.num_families, data.scenes and extend.scenes against them.
FAMILY_NAMES = ("plain", "gradient", "stripes", "checker", "spots", "rings", "waves", "grid")
DEFAULT_FAMILIES = 4
DEFAULT_SCENES = FAMILY_NAMES[:DEFAULT_FAMILIES]  # the default world's families

QUARANTINE_REASONS = (
    "missing_file",  # the path/URI does not exist or cannot be opened
    "unreadable",  # the container or codec cannot be decoded (corrupt, truncated, not a video)
    "no_video_stream",  # a readable container without a video stream (e.g. audio only)
    "too_few_frames",  # fewer decodable frames than the clip needs within [start, end]
    "frame_too_large",  # the source frame size passes data.max_source_pixels
    "bad_time_range",  # start/end not numbers, negative, or end <= start
    "empty_caption",  # missing or blank caption
    "non_text_caption",  # caption that is not text (a number, a list ...)
    "caption_not_utf8",  # caption bytes that are not valid UTF-8 in the manifest file
    "duplicate_id",  # clip id already used by an earlier row
    "no_caption",  # a raw video with neither a manifest caption nor a sidecar caption file (never invented)
    "scene_too_short",  # a detected scene shorter than one clip window or than data.min_scene_seconds
    "cut_failed",  # scene cutting of a raw video crashed its task (the map task element failed)
    "missing_member",  # a WebDataset sample without its video or caption member (txt/json)
    "bad_json",  # a WebDataset sample whose json member does not parse as a JSON object
    "held_frames",  # a source slower than data.fps, whose clip repeats frames, with data.quarantine_held_frames
    "duplicate_source",  # the same path, start and end as an earlier manifest row (the same clip listed twice)
)


class VideoManifest(pa.DataFrameModel):
    """A user's list of real videos. Only ``path`` and ``caption`` are required; rows are checked one by one
    during ingestion (bad rows are quarantined, not fatal), so the schema only fixes the column set."""

    path: Series[str]
    caption: Series[object] = pa.Field(nullable=True)
    clip_id: Series[str] | None = pa.Field(nullable=True)
    start: Series[float] | None = pa.Field(nullable=True)
    end: Series[float] | None = pa.Field(nullable=True)

    class Config:
        strict = False  # extra user columns are carried along and ignored
        coerce = True


class QuarantineRecord(pa.DataFrameModel):
    """One refused manifest row and why."""

    row: Series[int] = pa.Field(ge=0)
    clip_id: Series[str]
    path: Series[str]
    reason: Series[str] = pa.Field(isin=list(QUARANTINE_REASONS))
    detail: Series[str]

    class Config:
        strict = True
        coerce = True


class ClipIndex(pa.DataFrameModel):
    """Where each kept clip lives: shard file and row inside it. Every later table keys on ``clip_id``.

    ``role`` (lib.data.split) says what the clip may be used for: only ``train`` clips are learned from;
    ``validation``, ``reference`` and ``prompt`` clips are held out of every training stage."""

    clip_id: Series[str] = pa.Field(unique=True)
    shard: Series[str] = pa.Field(str_matches=r"^shard-\d{5}\.safetensors$")
    index: Series[int] = pa.Field(ge=0)
    caption: Series[str] = pa.Field(str_length={"min_value": 1})
    source: Series[str]
    role: Series[str] = pa.Field(isin=list(ROLES))
    # quality scores (lib.data.filters) of decoded manifest/raw clips; absent for the built-in dataset
    motion: Series[float] | None = pa.Field(ge=0, nullable=True)
    aesthetic: Series[float] | None = pa.Field(nullable=True)  # NaN when no aesthetic head is configured
    # frames repeating the one before (sample-and-hold of a source slower than data.fps); absent for the built-in data
    held_frames: Series[int] | None = pa.Field(ge=0)
    # sha256 of the clip's shard file, recorded when it was written and checked by every read (lib.data.shards);
    # absent only in indexes written before checksums, which load unchecked with a warning
    shard_sha256: Series[str] | None = pa.Field(str_matches=SHA256_PATTERN)

    class Config:
        strict = True
        coerce = True


class ClipAttributes(pa.DataFrameModel):
    """Generating attributes of built-in clips (object 2 columns are "" when the clip holds one object).
    They let evaluation score prompt-attribute accuracy and let cluster reports measure semantic alignment."""

    clip_id: Series[str] = pa.Field(unique=True)
    scene: Series[str]
    background: Series[str]
    num_objects: Series[int] = pa.Field(isin=[1, 2])
    shape: Series[str]
    color: Series[str]
    size: Series[str]
    motion: Series[str]
    shape2: Series[str]
    color2: Series[str]
    size2: Series[str]
    motion2: Series[str]

    class Config:
        strict = True
        coerce = True


FILTER_RULES = (
    "min_motion",  # mean flow below data.min_motion: a still or nearly still clip
    "max_motion",  # mean flow above data.max_motion: a shaky clip or one across a cut the detector missed
    "min_aesthetic",  # LAION aesthetic score below data.min_aesthetic
)


class FilteredClip(pa.DataFrameModel):
    """A decodable clip that a quality rule kept out of the shards, with its scores: filtering is a choice the
    user makes with thresholds, so every dropped clip stays visible and can be re-admitted by changing one."""

    row: Series[int] = pa.Field(ge=0)
    clip_id: Series[str]
    path: Series[str]
    start: Series[float] = pa.Field(nullable=True)
    end: Series[float] = pa.Field(nullable=True)
    motion: Series[float] = pa.Field(ge=0)
    aesthetic: Series[float] = pa.Field(nullable=True)  # NaN when no aesthetic head is configured
    rule: Series[str] = pa.Field(isin=list(FILTER_RULES))
    detail: Series[str]

    class Config:
        strict = True
        coerce = True
