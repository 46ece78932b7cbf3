"""Codec and encode tasks: the pipeline's own latent codec (when asked for), then latents + text embeddings."""

import logging

from flytekit import Cache, Resources, task
from flytekit.types.directory import FlyteDirectory
from pandera.typing import DataFrame

from data_schemas.encode import EncodedIndex
from data_schemas.ingest import ClipIndex
from lib.config import CodecConfig, EncodeConfig
from lib.encode.learned import VAE_DIR
from lib.encode.prepare import fit_codec
from lib.encode.store import encode_dataset, read_codec_info
from tasks.common import publish_stage, stage_dir, uri_of
from tasks.image import TASK_IMAGE

log = logging.getLogger(__name__)


@task(container_image=TASK_IMAGE, cache=Cache(version="codec-v1"), requests=Resources(cpu="2", mem="4Gi"), retries=1)
def train_codec(
    encode: EncodeConfig, cfg: CodecConfig, seed: int, shards: FlyteDirectory, index: DataFrame[ClipIndex],
    output_dir: str,
) -> FlyteDirectory:  # fmt: skip
    """With ``encode.codec: learned``, an AutoencoderKL trained on the train clips (held-out PSNR in its report);
    otherwise an empty folder: ``pixel`` needs nothing and ``vae`` names its own folder."""
    out = stage_dir(output_dir, "codec", encode.codec, cfg, seed, uri_of(shards))
    if encode.codec == "learned":
        _, report = fit_codec(cfg, seed, shards.download(), index, out)
        log.info(report.summary())
    return FlyteDirectory(publish_stage(output_dir, out))


@task(container_image=TASK_IMAGE, cache=Cache(version="encode-v5"), requests=Resources(cpu="2", mem="4Gi"), retries=1)
def encode_clips(
    cfg: EncodeConfig, shards: FlyteDirectory, index: DataFrame[ClipIndex], codec: FlyteDirectory, output_dir: str
) -> tuple[FlyteDirectory, DataFrame[EncodedIndex]]:
    """Latents and caption embeddings of every clip; prints how many captions ``encode.max_tokens`` cut (recorded in
    ``codec.json``), since a cut caption silently loses its last words in cross-attention."""
    out = stage_dir(output_dir, "encode", cfg, uri_of(shards), uri_of(codec))
    learned = f"{codec.download()}/{VAE_DIR}" if cfg.codec == "learned" else None
    encoded_index = encode_dataset(shards.download(), index, cfg, out, learned_codec=learned)
    cut = read_codec_info(out)["captions"]
    share = 100 * cut["cut_fraction"]
    line = f"{cut['cut']} of {cut['count']} captions ({share:.1f} %) cut to encode.max_tokens={cut['max_tokens']}"
    log.info(f"encode: {len(encoded_index)} clips; {line} (longest {cut['longest_tokens']} tokens)")
    return FlyteDirectory(publish_stage(output_dir, out)), encoded_index
