"""Table of the evaluation stage: one row per (method, metric, cluster) with sample counts and uncertainty."""

import pandera.pandas as pa
from pandera.typing import Series

METHOD_PATTERN = r"^(ddm:[a-z0-9_]+|monolith|expert:\d+|real)$"


class EvalReport(pa.DataFrameModel):
    """Scores of each sampling method; numbers are only comparable within one metric, extractor and N.

    ``metric`` names carry the extractor (``fd_attrnet``, ``fvd_i3d``, ``attr_acc_attrnet``, ``clip_sim``,
    ``motion_mad`` ...): a proxy network never gets the name FVD or CLIP. ``mean``/``sd`` are over generated draws
    (same prompts, different seeds); ``sd`` and ``ci95`` (t-interval half-width) are NaN for a single draw.
    ``cluster`` is -1 for all prompts, else the prompts of one data cluster.
    """

    method: Series[str] = pa.Field(str_matches=METHOD_PATTERN)
    metric: Series[str] = pa.Field(str_matches=r"^[a-z0-9_.]+$")
    extractor: Series[str]
    cluster: Series[int] = pa.Field(ge=-1)
    n_real: Series[int] = pa.Field(ge=0)
    n_generated: Series[int] = pa.Field(ge=0)
    draws: Series[int] = pa.Field(ge=1)
    mean: Series[float]
    sd: Series[float] = pa.Field(nullable=True, ge=0.0)
    ci95: Series[float] = pa.Field(nullable=True, ge=0.0)

    class Config:
        strict = True

    @pa.dataframe_check
    def one_row_per_key(cls, df):
        """(method, metric, cluster) identifies a row."""
        return ~df.duplicated([cls.method, cls.metric, cls.cluster])
