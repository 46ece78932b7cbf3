"""Tables of the encode stage."""

import pandera.pandas as pa
from pandera.typing import Series

from data_schemas.ingest import SHA256_PATTERN


class EncodedIndex(pa.DataFrameModel):
    """Where the cached latents and caption embeddings of each clip live: encoded shard file and row inside it."""

    clip_id: Series[str] = pa.Field(unique=True)
    shard: Series[str] = pa.Field(str_matches=r"^encoded-\d{5}\.safetensors$")
    index: Series[int] = pa.Field(ge=0)
    # sha256 of the encoded shard file, recorded when it was written and checked by every read (lib.encode.store);
    # absent only in folders encoded before checksums, which load unchecked with a warning
    shard_sha256: Series[str] | None = pa.Field(str_matches=SHA256_PATTERN)

    class Config:
        strict = True
