"""The end of a run: persist the results to ``output_dir`` and print what a person reads first."""

import html
import json
import logging
import shutil
import tempfile
from pathlib import Path

import fsspec
import pandas as pd
from flytekit import task
from flytekit.types.directory import FlyteDirectory
from flytekit.types.file import FlyteFile
from pandera.typing import DataFrame

from data_schemas.evaluate import EvalReport, HeldoutLoss
from data_schemas.router import RouterReport
from lib.config import RunConfig, config_to_dict, config_to_yaml
from lib.evaluate.compare import headline
from lib.evaluate.heldout_loss import loss_line
from lib.evaluate.page import report_html
from lib.sample.methods import gallery_html, load_sampled
from lib.sample.sheet import sheet_html
from lib.storage import StorageError, check_output_dir, is_remote, publish_folder, resolve
from lib.train.router import report_line, router_report_html
from tasks.common import tracker_for
from tasks.image import TASK_IMAGE

log = logging.getLogger(__name__)

SUMMARY = "summary.md"
CONFIG = "config.yaml"
PAGE = "report.html"


@task(container_image=TASK_IMAGE, cache=False)
def as_directory(uri: str) -> FlyteDirectory:
    """A trained model folder given by path or URI, checked to hold a model, as a typed Flyte edge."""
    target = (resolve(uri) if is_remote(uri) else None) or uri  # a published folder: its pointed attempt
    fs, root = fsspec.core.url_to_fs(target)
    try:
        found = fs.exists(f"{root}/ddm.json") or fs.exists(f"{root}/config.json")
    except OSError as exc:
        raise StorageError(f"{uri}: cannot be read: {exc}") from exc
    if not found:
        raise ValueError(f"{uri}: not a DDM folder (no ddm.json) nor a model folder (no config.json)")
    return FlyteDirectory(target)


@task(container_image=TASK_IMAGE, cache=False)
def summarize(
    cfg: RunConfig,
    results_name: str,
    report: DataFrame[EvalReport],
    featnet_note: str,
    ddm: FlyteDirectory,
    monolith: FlyteDirectory,
    samples: FlyteDirectory,
    sheet: FlyteFile,
    router_report: DataFrame[RouterReport] | None = None,
    heldout: DataFrame[HeldoutLoss] | None = None,
) -> str:
    """Copies the DDM folder, monolith, samples, contact sheet (``samples.png``, from ``evaluate_task``), reports,
    the printed summary (``summary.md``) and the resolved config (``config.yaml``) to
    ``<cfg.output_dir>/<results_name>``; returns that path. The execution's MLflow run gets the config too (as params
    and ``config.yaml``).

    The results are published as one folder (``lib.storage.publish_folder``), so two runs finishing at once never mix
    their files; on an object store ``<dest>/ddm`` and the others resolve through ``<dest>/PUBLISHED.json``."""
    output_dir = cfg.output_dir
    dest = f"{output_dir.rstrip('/')}/{results_name}"
    text = summary_text(dest, report, featnet_note, Path(ddm.download()), router_report, heldout)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        for name, folder in (("ddm", ddm), ("monolith", monolith), ("samples", samples)):
            shutil.copytree(folder.download(), staged / name)
        shutil.copyfile(sheet.download(), staged / "samples.png")
        report.to_parquet(staged / "eval_report.parquet", index=False)
        if router_report is not None:  # re-evaluation trains no router
            router_report.to_parquet(staged / "router_report.parquet", index=False)
        if heldout is not None:
            heldout.to_parquet(staged / "heldout_loss.parquet", index=False)
        (staged / SUMMARY).write_text(f"```\n{text}\n```\n")
        (staged / PAGE).write_text(results_page(report, featnet_note, staged / "samples", staged / "samples.png",
                                                router_report))  # fmt: skip
        (staged / CONFIG).write_text(config_to_yaml(cfg))
        if is_remote(output_dir):
            check_output_dir(output_dir)
        publish_folder(staged, dest)
    tracker = tracker_for(output_dir, only_after_work=True)
    if tracker is not None:  # what a person compares between executions: the table, sheet, GIFs, headline numbers
        run_id = tracker.execution_run()
        tracker.name_execution(run_id, "pipeline" if results_name == "results" else results_name)
        tracker.log_config(run_id, config_to_dict(cfg), config_to_yaml(cfg))
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "eval_report.csv"
            report.to_csv(table, index=False)
            tracker.log_artifact(run_id, table)
            tracker.log_artifact(run_id, shutil.copyfile(sheet.download(), Path(tmp) / "samples.png"))
        gifs = Path(samples.download()) / "gifs"
        if gifs.is_dir():
            tracker.log_artifact(run_id, gifs, "samples")
        main = report[(report["cluster"] == -1) & report["method"].ne("real")]
        tracker.log_metrics(run_id, [{"step": 0, **{f"{r.metric}.{r.method}".replace(":", "_"): r.mean
                                                     for r in main.itertuples() if pd.notna(r.mean)}}])  # fmt: skip
        tracker.finish(run_id)
    log.info(text)
    return dest


def summary_text(
    dest: str,
    report: pd.DataFrame,
    featnet_note: str,
    ddm: Path,
    router_report: pd.DataFrame | None,
    heldout: pd.DataFrame | None = None,
) -> str:
    """What a person reads first: printed at the end of a run and kept as ``summary.md`` beside the results."""
    missing = json.loads((ddm / "ddm.json").read_text()).get("missing_experts", [])
    extra = [name for name, table in (("router_report", router_report), ("heldout_loss", heldout)) if table is not None]
    reports = f"{dest}/eval_report.parquet" + "".join(f", {name}.parquet" for name in extra)
    lines = [
        "=" * 100,
        "ddm-flyte run summary: held-out prompts, 95 % paired bootstrap intervals; metric names carry their feature "
        "network (fd_inf_attrnet is not FVD); ratio_* = monolith / method",
        headline(report).to_string(),
        featnet_note,
        f"experts missing (failed training, excluded from routing): {missing}" if missing else "all experts trained",
        "router accuracy by t: " + (report_line(router_report) if router_report is not None else "not retrained"),
        *([_heldout_line(heldout)] if heldout is not None else []),
        f"DDM: {dest}/ddm   monolith: {dest}/monolith   (each loads with DDMPipeline.from_pretrained)",
        f"samples (GIFs per method): {dest}/samples/gifs",
        f"contact sheet (real prompt clips above every method, same prompts): {dest}/samples.png",
        f"the results page (headline table, charts, contact sheet, samples, router; open in a browser): {dest}/{PAGE}",
        f"reports: {reports}; this summary: {dest}/{SUMMARY}; the resolved config: {dest}/{CONFIG}",
        "=" * 100,
    ]
    return "\n".join(lines)


def _heldout_line(heldout: pd.DataFrame) -> str:
    """The DDM's scored strategy (the one that is not oracle) against the monolith."""
    ddm = sorted(m for m in set(heldout["method"]) if m.startswith("ddm:") and m != "ddm:oracle")
    return loss_line(heldout, ddm[0]) if ddm else "held-out loss: no DDM rows"


def results_page(
    report: pd.DataFrame, featnet_note: str, samples: Path, sheet: Path, router_report: pd.DataFrame | None
) -> str:
    """``report.html``: the evaluation page (the evaluation Deck's content) with the router's report below, one file
    that opens from the results folder wherever it is copied."""
    _, prompts, skipped = load_sampled(samples)
    methods = [m for m in report["method"].drop_duplicates() if m != "real"]
    gallery = sheet_html(sheet) + gallery_html(samples, methods, prompts["caption"].tolist())
    notes = f"<p>{html.escape(featnet_note)}</p><p>skipped methods: {skipped or 'none'}</p>"
    router = router_report_html(router_report) if router_report is not None else "<p>router not retrained</p>"
    return report_html(report, gallery + router, notes=notes)
