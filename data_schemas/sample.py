"""The fixed prompt set every method is sampled on."""

import pandera.pandas as pa
from pandera.typing import Series


class PromptSet(pa.DataFrameModel):
    """Cluster-stratified prompts: the captions of chosen clips, with the clip's cluster (oracle routing and
    per-cluster scores) and id (its generating attributes score prompt-attribute accuracy)."""

    prompt_id: Series[int] = pa.Field(ge=0, unique=True)
    clip_id: Series[str]
    caption: Series[str] = pa.Field(str_length={"min_value": 1})
    cluster_id: Series[int] = pa.Field(ge=0)

    class Config:
        strict = True
