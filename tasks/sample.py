"""Assemble the DDM folder, fix the prompt set, and sample every compared method on it."""

import json
import logging
import tempfile
from pathlib import Path

from flytekit import Cache, Deck, Resources, task
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from pandera.typing import DataFrame
from safetensors.numpy import load_file

from data_schemas.cluster import ClusterAssignment
from data_schemas.ingest import ClipIndex
from data_schemas.sample import PromptSet
from lib.config import ClusterConfig, EncodeConfig, SampleConfig
from lib.encode.store import read_codec_info
from lib.io import persist
from lib.models.levers import use_compile_cache
from lib.sample.command import load_model, sample_to_folder
from lib.sample.folder import MANIFEST, assemble_ddm, assemble_single, clustering_record
from lib.sample.methods import gallery_html, sample_methods
from lib.sample.pipeline import DDMPipeline
from lib.sample.prompts import stratified_prompts
from tasks.common import publish_stage, stage_dir, uri_of
from tasks.image import TASK_IMAGE

log = logging.getLogger(__name__)


@task(container_image=TASK_IMAGE, cache=Cache(version="assemble-v3"), requests=Resources(cpu="1", mem="2Gi"))
def assemble_ddm_task(
    encode_cfg: EncodeConfig,
    cluster_cfg: ClusterConfig,
    experts: list[FlyteDirectory | None],
    router: FlyteDirectory,
    encoded: FlyteDirectory,
    centroids: FlyteFile,
    output_dir: str,
) -> FlyteDirectory:
    """One self-contained folder that ``DDMPipeline.from_pretrained`` loads (failed experts recorded as missing)."""
    sources = [uri_of(e) if e is not None else None for e in experts]
    out = stage_dir(output_dir, "ddm", sources, uri_of(router), uri_of(centroids)) / "ddm"
    folders = {k: (e.download() if e is not None else None) for k, e in enumerate(experts)}
    info = read_codec_info(encoded.download())
    arrays = load_file(centroids.download())
    clustering = {**clustering_record(cluster_cfg), "state": {k: v for k, v in arrays.items() if k != "centroids"}}
    assemble_ddm(out, folders, router.download(), info, arrays["centroids"], encode_cfg, clustering)
    missing = [k for k, e in folders.items() if e is None]
    published = publish_stage(output_dir, out)
    log.info(f"ddm: {len(experts) - len(missing)}/{len(experts)} experts -> {published}"
             + (f"; missing (failed training): {missing}" if missing else ""))  # fmt: skip
    return FlyteDirectory(published)


@task(container_image=TASK_IMAGE, cache=Cache(version="assemble-single-v2"), requests=Resources(cpu="1", mem="2Gi"))
def assemble_single_task(
    encode_cfg: EncodeConfig, model: FlyteDirectory, encoded: FlyteDirectory, name: str, output_dir: str
) -> FlyteDirectory:
    """The monolith or a student as a K = 1 DDM folder, which ``DDMPipeline.from_pretrained`` loads anywhere."""
    out = stage_dir(output_dir, "single", name, uri_of(model), uri_of(encoded)) / name
    assemble_single(out, model.download(), read_codec_info(encoded.download()), encode_cfg)
    published = publish_stage(output_dir, out)
    log.info(f"{name}: loadable alone -> {published}")
    return FlyteDirectory(published)


def load_for_sampling(folder: str, encoded_info: dict) -> DDMPipeline:
    """An assembled folder (a DDM, or one model with its codec) or, as re-evaluation may pass, a trainer's folder."""
    if (Path(folder) / MANIFEST).is_file():
        return DDMPipeline.from_pretrained(folder)
    return DDMPipeline.from_single(folder, encoded_info)


@task(container_image=TASK_IMAGE, cache=Cache(version="prompts-v2"))
def make_prompts(
    cfg: SampleConfig, seed: int, assignments: DataFrame[ClusterAssignment], index: DataFrame[ClipIndex]
) -> DataFrame[PromptSet]:
    """The fixed prompt set every method is sampled on: held-out prompt-role clips, clusters in proportion."""
    return stratified_prompts(assignments, index, cfg.num_prompts, seed)


@task(
    container_image=TASK_IMAGE,
    cache=Cache(version="sample-v2"),
    requests=Resources(cpu="2", mem="4Gi"),
    retries=1,
    enable_deck=True,
)
def sample_task(
    cfg: SampleConfig,
    seed: int,
    ddm: FlyteDirectory,
    monolith: FlyteDirectory,
    encoded: FlyteDirectory,
    prompts: DataFrame[PromptSet],
    output_dir: str,
) -> FlyteDirectory:
    """Videos of the DDM (each strategy), each expert alone and the monolith: one per prompt, paired noise."""
    out = stage_dir(output_dir, "samples", cfg, seed, uri_of(ddm), uri_of(monolith), prompts.to_json())
    use_compile_cache(output_dir)  # a long job compiles the experts' blocks (DDMPipeline.compile_for)
    info = read_codec_info(encoded.download())
    pipe, mono = DDMPipeline.from_pretrained(ddm.download()), load_for_sampling(monolith.download(), info)
    result = sample_methods(pipe, mono, prompts, cfg, seed, out)
    Deck("samples", gallery_html(out, list(result.videos), prompts["caption"].tolist()))
    rates = {m: round(len(prompts) / s, 2) for m, s in result.seconds.items()}
    published = publish_stage(output_dir, out)
    skipped = result.skipped or "none"
    log.info(f"sample: videos/s per method {json.dumps(rates)}; skipped {skipped} -> {published}")
    return FlyteDirectory(published)


@task(container_image=TASK_IMAGE, requests=Resources(cpu="2", mem="4Gi"), retries=1)
def sample_model_task(
    model_uri: str,
    prompts: list[str],
    out: str,
    num_inference_steps: int,
    guidance_scale: float,
    strategy: str,
    top_k: int,
    seed: int,
) -> str:
    """Videos of a trained model folder for given prompts, persisted to ``out`` (a folder or a bucket URI)."""
    settings = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "strategy": strategy,
                "top_k": top_k, "seed": seed}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        paths = sample_to_folder(load_model(model_uri), prompts, tmp, **settings)
        persist(tmp, out)
    log.info(f"sample: {len(prompts)} prompt(s), {len(paths)} file(s) and the contact sheet -> {out}")
    return out
