"""Table of the evaluation stage: one row per (method, metric, cluster) with sample counts and uncertainty."""

import pandera.pandas as pa
from pandera.typing import Series

_STRATEGY = r"[a-z0-9_]+(:\d+)?"  # a routing strategy (lib.strategy), e.g. topk, random_topk, expert:2
METHOD_PATTERN = rf"^(ddm:{_STRATEGY}(>{_STRATEGY}@[0-9.]+)*|monolith|student|expert:\d+|real)$"  # student: distilled


class EvalReport(pa.DataFrameModel):
    """Scores of each sampling method on held-out prompts, one video per prompt.

    ``metric`` names carry the extractor (``fd_inf_attrnet``, ``kid_attrnet``, ``fd_attrnet``, ``fvd_i3d``,
    ``attr_acc_attrnet``, ``clip_sim``, ``motion_mad`` ...): a proxy network never gets the name FVD or CLIP.
    ``ratio_<distance>`` rows hold monolith / method. ``mean`` is the point estimate on all prompts and
    [``ci_low``, ``ci_high``] its 95 % paired bootstrap interval over prompts (lib.evaluate.distances). Only the
    fixed-N ``fd_*``/``fvd_*`` depend on N; ``cluster`` is -1 for all prompts, else the prompts of one cluster.
    """

    method: Series[str] = pa.Field(str_matches=METHOD_PATTERN)
    metric: Series[str] = pa.Field(str_matches=r"^[a-z0-9_.]+$")
    extractor: Series[str]
    cluster: Series[int] = pa.Field(ge=-1)
    n_real: Series[int] = pa.Field(ge=0)
    n_generated: Series[int] = pa.Field(ge=0)
    mean: Series[float]
    ci_low: Series[float] = pa.Field(nullable=True)
    ci_high: Series[float] = pa.Field(nullable=True)

    class Config:
        strict = True

    @pa.dataframe_check
    def one_row_per_key(cls, df):
        """(method, metric, cluster) identifies a row."""
        return ~df.duplicated([cls.method, cls.metric, cls.cluster])

    @pa.dataframe_check
    def interval_is_ordered(cls, df):
        """An interval, where there is one, has ci_low <= ci_high."""
        return (df[cls.ci_low].isna() & df[cls.ci_high].isna()) | (df[cls.ci_low] <= df[cls.ci_high])


class HeldoutLoss(pa.DataFrameModel):
    """Flow-matching loss on held-out clips (``lib.evaluate.heldout_loss``): one row per (method, t, cluster).

    The DDM is scored as it samples (its router and strategy mix the experts' velocities at that t), the monolith as
    itself; the noise is the same for every method, so differences at one t are paired. ``cluster`` -1: all clips.
    """

    method: Series[str] = pa.Field(str_matches=METHOD_PATTERN)
    t: Series[float] = pa.Field(gt=0.0, le=1.0)
    cluster: Series[int] = pa.Field(ge=-1)
    loss: Series[float] = pa.Field(ge=0.0)
    clips: Series[int] = pa.Field(gt=0)

    class Config:
        strict = True
