"""Tables of the encode stage."""

import pandera.pandas as pa
from pandera.typing import Series


class EncodedIndex(pa.DataFrameModel):
    """Where the cached latents and caption embeddings of each clip live: encoded shard file and row inside it."""

    clip_id: Series[str] = pa.Field(unique=True)
    shard: Series[str] = pa.Field(str_matches=r"^encoded-\d{5}\.safetensors$")
    index: Series[int] = pa.Field(ge=0)

    class Config:
        strict = True
