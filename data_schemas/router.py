"""Table of the router stage: how well the router names the cluster of a noisy latent, per timestep bucket."""

import pandera.pandas as pa
from pandera.typing import Series


class RouterReport(pa.DataFrameModel):
    """One row per equal-width t bucket [t_low, t_high) of [0, 1], measured on held-out clips with several noise
    draws per clip. Accuracy should be high near t = 0 and fall toward chance (1/K) as t -> 1, where x_t is
    almost pure noise; ``ece`` is the top-label expected calibration error over 10 confidence bins."""

    t_low: Series[float] = pa.Field(ge=0.0, lt=1.0)
    t_high: Series[float] = pa.Field(gt=0.0, le=1.0)
    accuracy: Series[float] = pa.Field(ge=0.0, le=1.0)
    ece: Series[float] = pa.Field(ge=0.0, le=1.0)
    mean_max_prob: Series[float] = pa.Field(ge=0.0, le=1.0)
    n: Series[int] = pa.Field(gt=0)

    class Config:
        strict = True

    @pa.dataframe_check
    def buckets_are_ordered(cls, df):
        """Each bucket is non-empty and buckets come in increasing t."""
        return (df[cls.t_high] > df[cls.t_low]) & (df[cls.t_low].diff().fillna(1.0) > 0)
