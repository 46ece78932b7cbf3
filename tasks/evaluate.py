"""Evaluation tasks: the offline feature network (once per dataset) and the comparison report with its Deck."""

import logging
import time
from pathlib import Path

import pandas as pd
from flytekit import Cache, Deck, Resources, task
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from pandera.typing import DataFrame

from data_schemas.cluster import ClusterAssignment
from data_schemas.evaluate import EvalReport, HeldoutLoss
from data_schemas.ingest import ClipAttributes, ClipIndex
from data_schemas.sample import PromptSet
from lib.config import EvalConfig, SampleConfig
from lib.data.shards import load_clips
from lib.data.split import TRAIN, VALIDATION, rows_with_role
from lib.encode.store import load_encoded, read_codec_info
from lib.evaluate.attrnet import AttrNet
from lib.evaluate.attrnet_training import featnet_note, fit_attrnet
from lib.evaluate.compare import compare_methods
from lib.evaluate.heldout_loss import heldout_loss, loss_line
from lib.evaluate.page import report_html
from lib.io import atomic_write
from lib.sample.methods import gallery_html, load_sampled
from lib.sample.pipeline import DDMPipeline
from lib.sample.sheet import REAL_ROW, contact_sheet, sheet_html
from tasks.common import publish_stage, stage_dir, tracker_for, uri_of
from tasks.image import TASK_IMAGE
from tasks.sample import load_for_sampling

log = logging.getLogger(__name__)


@task(container_image=TASK_IMAGE, cache=Cache(version="featnet-v2"), requests=Resources(cpu="2", mem="4Gi"), retries=1)
def train_featnet(
    cfg: EvalConfig,
    seed: int,
    shards: FlyteDirectory,
    index: DataFrame[ClipIndex],
    attributes: DataFrame[ClipAttributes],
    output_dir: str,
) -> tuple[FlyteDirectory, str]:
    """AttrNet on train-role clips and negatives only (never a reference, prompt or generated video); returns it and
    its accuracy and abstention on the held-out validation clips.

    With an I3D file configured (FVD proper) or without generating attributes (real videos) nothing is trained.
    """
    out = stage_dir(output_dir, "featnet", cfg.featnet_steps, seed, uri_of(shards))
    if cfg.i3d_path or attributes.empty:
        note = "AttrNet not trained (I3D configured or no generating attributes)"
        return FlyteDirectory(publish_stage(output_dir, out)), note
    by_role = {role: attributes[attributes["clip_id"].isin(rows_with_role(index, role)["clip_id"])]
               for role in (TRAIN, VALIDATION)}  # fmt: skip
    videos = {role: load_clips(shards.download(), index, rows["clip_id"].tolist()) for role, rows in by_role.items()}
    started = time.time()  # the MLflow run's start: it lasts as long as the training
    model, checks = fit_attrnet(
        videos[TRAIN], by_role[TRAIN], videos[VALIDATION], by_role[VALIDATION], cfg.featnet_steps, seed
    )
    model.save_pretrained(out / "attrnet")
    tracker = tracker_for(output_dir)
    if tracker is not None:
        params = {"featnet_steps": cfg.featnet_steps, "seed": seed, "train_clips": len(by_role[TRAIN])}
        rows = [{"step": 0, **{k.replace(".", "_"): v for k, v in checks.items()}}]
        tracker.record_model("attrnet", "featnet", params, rows, started)
    note = featnet_note(checks, model.vocab)
    log.info(note)
    return FlyteDirectory(publish_stage(output_dir, out)), note


@task(
    container_image=TASK_IMAGE,
    cache=Cache(version="evaluate-v4"),
    requests=Resources(cpu="2", mem="4Gi"),
    retries=1,
    enable_deck=True,
)
def evaluate_task(
    cfg: EvalConfig,
    seed: int,
    samples: FlyteDirectory,
    featnet: FlyteDirectory,
    featnet_note: str,
    shards: FlyteDirectory,
    index: DataFrame[ClipIndex],
    attributes: DataFrame[ClipAttributes],
    assignments: DataFrame[ClusterAssignment],
    output_dir: str,
) -> tuple[DataFrame[EvalReport], FlyteFile]:
    """EvalReport of every method, the contact sheet (``samples.png``: the real prompt clips above every method's
    videos, same prompts) and a Deck with the table, bar charts, the sheet and the samples side by side."""
    out = stage_dir(output_dir, "evaluate", cfg, seed, uri_of(samples), uri_of(featnet))
    generated, prompts, skipped = load_sampled(samples.download())
    shards_dir = shards.download()
    model_dir = Path(featnet.download()) / "attrnet"
    model = AttrNet.from_pretrained(model_dir) if model_dir.is_dir() else None
    report = compare_methods(shards_dir, index, attributes, assignments, generated, prompts, cfg, model, seed)
    real = load_clips(shards_dir, index, prompts["clip_id"].astype(str).tolist())
    sheet = contact_sheet([(REAL_ROW, real), *generated.items()], prompts, out / "samples.png")
    gallery = sheet_html(sheet) + gallery_html(samples.path, list(generated), prompts["caption"].tolist())
    html = report_html(report, gallery, notes=f"<p>{featnet_note}</p><p>skipped methods: {skipped or 'none'}</p>")
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(html))
    sheet_uri = publish_stage(output_dir, sheet)  # the whole stage folder, report.html beside the sheet
    Deck("evaluation", html)
    return report, FlyteFile(sheet_uri)


@task(container_image=TASK_IMAGE, cache=Cache(version="heldout-loss-v1"), requests=Resources(cpu="2", mem="4Gi"),
      retries=1)  # fmt: skip
def heldout_loss_task(
    cfg: SampleConfig,
    seed: int,
    ddm: FlyteDirectory,
    monolith: FlyteDirectory,
    encoded: FlyteDirectory,
    prompts: DataFrame[PromptSet],
) -> DataFrame[HeldoutLoss]:
    """The flow-matching loss per t of the DDM as it samples (its strategy, and oracle routing) and of the monolith,
    on the prompt clips with the same noise: the cheap paired measure beside the sampled metrics."""
    folder = encoded.download()
    data = load_encoded(folder, prompts["clip_id"].tolist())
    clusters = prompts["cluster_id"].tolist()
    pipe = DDMPipeline.from_pretrained(ddm.download())
    mono = load_for_sampling(monolith.download(), read_codec_info(folder))
    table = pd.concat(
        [heldout_loss(pipe, "ddm", data, [cfg.strategy, "oracle"], seed, clusters, top_k=cfg.top_k),
         heldout_loss(mono, "monolith", data, [], seed, clusters)],
        ignore_index=True,
    )  # fmt: skip
    log.info(loss_line(table, f"ddm:{cfg.strategy}"))
    return table
