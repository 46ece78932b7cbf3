"""Table of the expert/monolith trainer: one row per optimizer step."""

import pandera.pandas as pa
from pandera.typing import Series


class TrainingLog(pa.DataFrameModel):
    """The loss curve of one training run. ``loss`` is the batch-mean flow-matching (or eps) MSE before the
    step, ``grad_norm`` the total gradient norm before clipping, ``lr`` the rate the step used and ``seconds``
    the wall time of the step (bookkeeping included, checkpoint writes excluded). A run resumed from a checkpoint
    carries the rows of the steps done before the interruption, so steps are always 1..n without gaps."""

    step: Series[int] = pa.Field(ge=1, unique=True)
    loss: Series[float] = pa.Field(ge=0.0)
    lr: Series[float] = pa.Field(ge=0.0)
    grad_norm: Series[float] = pa.Field(ge=0.0)
    seconds: Series[float] = pa.Field(ge=0.0)

    class Config:
        strict = True

    @pa.dataframe_check
    def steps_are_consecutive(cls, df):
        """Steps run 1, 2, ..., n in order."""
        return (df[cls.step].diff().fillna(df[cls.step].iloc[0] if len(df) else 1) == 1).all()
