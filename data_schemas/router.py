"""Table of the router stage: how well the router names the cluster of a noisy latent, per timestep bucket, at exact
timesteps, and beside it how well the caption alone does."""

import pandera.pandas as pa
from pandera.typing import Series

BUCKET = "bucket"  # t drawn uniformly inside [t_low, t_high)
EXACT = "exact"  # t = t_low = t_high exactly (t = 1: pure noise, the sampler's first step)
CAPTION_ONLY = "caption_only"  # a linear classifier of the pooled caption alone: the router's ceiling at t = 1
KINDS = (BUCKET, EXACT, CAPTION_ONLY)


class RouterReport(pa.DataFrameModel):
    """Measured on held-out clips with several noise draws per clip (one per clip for ``caption_only``).

    ``bucket`` rows: one per equal-width t bucket [t_low, t_high) of [0, 1], in increasing t. Accuracy should be
    high near t = 0 and fall toward what the caption alone tells as t -> 1, where x_t is almost pure noise.
    ``exact`` rows: t_low = t_high = the t every draw used. A bucket average hides the endpoint t = 1, where
    sampling starts and only the caption can tell the cluster, so it gets rows of its own.
    ``caption_only``: one row at t = 1 (the t where the caption is all there is), a logistic regression on the pooled
    caption vector fitted on the router's train clips: the most the router can reach at t = 1, and what it should
    reach. ``ece`` is the top-label expected calibration error over 10 confidence bins.
    """

    kind: Series[str] = pa.Field(isin=KINDS)
    t_low: Series[float] = pa.Field(ge=0.0, le=1.0)
    t_high: Series[float] = pa.Field(ge=0.0, le=1.0)
    accuracy: Series[float] = pa.Field(ge=0.0, le=1.0)
    ece: Series[float] = pa.Field(ge=0.0, le=1.0)
    mean_max_prob: Series[float] = pa.Field(ge=0.0, le=1.0)
    n: Series[int] = pa.Field(gt=0)

    class Config:
        strict = True

    @pa.dataframe_check
    def buckets_are_ordered(cls, df):
        """Each bucket is non-empty and buckets come in increasing t."""
        buckets = df[df[cls.kind] == BUCKET]
        ok = (buckets[cls.t_high] > buckets[cls.t_low]) & (buckets[cls.t_low].diff().fillna(1.0) > 0)
        return ok.reindex(df.index, fill_value=True)

    @pa.dataframe_check
    def points_are_points(cls, df):
        """``exact`` and ``caption_only`` rows name one t (t_low = t_high), each exact t once."""
        repeated = df[df[cls.kind] == EXACT].duplicated(cls.t_low).reindex(df.index, fill_value=False)
        return (df[cls.kind] == BUCKET) | ((df[cls.t_low] == df[cls.t_high]) & ~repeated)

    @pa.dataframe_check
    def one_caption_row_at_t1(cls, df):
        """At most one ``caption_only`` row, at t = 1."""
        caption = df[cls.kind] == CAPTION_ONLY
        return ~caption | ((df[cls.t_low] == 1.0) & (caption.sum() == 1))
