"""Evaluation tasks: the offline feature network (once per dataset) and the comparison report with its Deck."""

from pathlib import Path

from flytekit import Cache, Deck, Resources, task
from flytekit.types.directory import FlyteDirectory
from pandera.typing import DataFrame

from data_schemas.cluster import ClusterAssignment
from data_schemas.evaluate import EvalReport
from data_schemas.ingest import ClipAttributes, ClipIndex
from lib.config import EvalConfig
from lib.data.shards import load_clips
from lib.evaluate.compare import compare_methods
from lib.evaluate.featnet import AttrNet, chance_accuracy, fit_attrnet
from lib.evaluate.report import report_html
from lib.io import atomic_write
from lib.sample.methods import load_sampled
from tasks.common import stage_dir, uri_of


@task(cache=Cache(version="featnet-v1"), requests=Resources(cpu="2", mem="4Gi"), retries=1)
def train_featnet(
    cfg: EvalConfig,
    seed: int,
    shards: FlyteDirectory,
    index: DataFrame[ClipIndex],
    attributes: DataFrame[ClipAttributes],
    output_dir: str,
) -> tuple[FlyteDirectory, str]:
    """AttrNet on the real clips only (it never sees generated videos); returns it and its held-out accuracy.

    With an I3D file configured (FVD proper) or without generating attributes (real videos) nothing is trained.
    """
    out = stage_dir(output_dir, "featnet", cfg.featnet_steps, cfg.featnet_holdout, seed, uri_of(shards))
    if cfg.i3d_path or attributes.empty:
        return FlyteDirectory(str(out)), "AttrNet not trained (I3D configured or no generating attributes)"
    videos = load_clips(shards.download(), index, attributes["clip_id"].tolist())
    model, accuracy = fit_attrnet(videos, attributes, cfg.featnet_steps, cfg.featnet_holdout, seed)
    model.save_pretrained(out / "attrnet")
    chance = chance_accuracy()
    note = "AttrNet held-out accuracy (chance): " + ", ".join(
        f"{k} {v:.2f} ({chance[k]:.2f})" for k, v in accuracy.items()
    )
    print(note, flush=True)
    return FlyteDirectory(str(out)), note


@task(cache=Cache(version="evaluate-v1"), requests=Resources(cpu="2", mem="4Gi"), retries=1, enable_deck=True)
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
) -> DataFrame[EvalReport]:
    """EvalReport of every method and a Deck with the table, bar charts and samples side by side."""
    out = stage_dir(output_dir, "evaluate", cfg, seed, uri_of(samples), uri_of(featnet))
    generated, prompts, skipped = load_sampled(samples.download())
    model_dir = Path(featnet.download()) / "attrnet"
    model = AttrNet.from_pretrained(model_dir) if model_dir.is_dir() else None
    report = compare_methods(shards.download(), index, attributes, assignments, generated, prompts, cfg, model, seed)
    gifs = {m: sorted(str(p) for p in (Path(samples.path) / "gifs").glob(f"{m.replace(':', '-')}-*.gif"))
            for m in generated}  # fmt: skip
    html = report_html(report, gifs) + f"<p>{featnet_note}</p><p>skipped methods: {skipped or 'none'}</p>"
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(html))
    Deck("evaluation", html)
    return report
