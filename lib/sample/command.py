"""Prompts to video files from any trained model folder, without writing Python: the ``ddm-sample`` command and
the ``sample_wf`` workflow both call ``sample_to_folder``.

Why a command: a user with a trained DDM (or its monolith, a distilled student) wants videos for their own prompts.
The folder is self-describing (``DDMPipeline.from_pretrained``), so the command needs only the folder, the prompts
and the sampler settings, which keep the names diffusers gives them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lib.io import atomic_write
from lib.sample.pipeline import VIDEO_FORMATS, DDMPipeline, save_videos
from lib.sample.sheet import contact_sheet
from lib.storage import download_dir, download_published, is_remote

SHEET = "samples.png"
PROMPTS = "prompts.json"


def load_model(model: str, device: str = "cpu") -> DDMPipeline:
    """A DDM, monolith or student folder, local or at an fsspec URI (a published folder resolves to its attempt)."""
    if not is_remote(model):
        return DDMPipeline.from_pretrained(model, device)
    with tempfile.TemporaryDirectory(prefix="ddm-model-") as local:  # loading reads every weight into memory
        if not (download_published(model, local) or download_dir(model, local)):
            raise FileNotFoundError(f"{model}: no model folder there (neither published nor a plain folder)")
        return DDMPipeline.from_pretrained(local, device)


def read_prompts(prompts: Sequence[str], prompts_file: str | None) -> list[str]:
    """The ``--prompt`` values, then one prompt per non-empty line of ``prompts_file``; refuses none at all."""
    found = [p.strip() for p in prompts if p.strip()]
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: prompts file not found")
        found += [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not found:
        raise ValueError("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE (one per line)")
    return found


def sample_to_folder(
    pipe: DDMPipeline,
    prompts: list[str],
    out_dir: str | Path,
    prefix: str = "sample",
    formats: Sequence[str] = VIDEO_FORMATS,
    fps: float = 8.0,
    **settings,
) -> list[Path]:
    """One video per prompt as ``<prefix>-NNNN.<fmt>``, a contact sheet of the first prompts (``samples.png``) and
    ``prompts.json`` (file stem -> prompt and the settings), all in ``out_dir``; returns the video paths.

    ``settings`` go to ``DDMPipeline.generate`` (``num_inference_steps``, ``guidance_scale``, ``strategy``,
    ``top_k``, ``seed``, ``batch_size``).
    """
    out_dir = Path(out_dir)
    frames = pipe(prompts, **settings).frames
    paths = save_videos(frames, out_dir, prefix, fps=fps, formats=formats)
    table = pd.DataFrame({"caption": prompts, "cluster_id": range(len(prompts))})  # every prompt its own column
    contact_sheet([(Path(pipe.name).name or "model", frames)], table, out_dir / SHEET)
    record = {"model": pipe.name, "settings": settings,
              "videos": {f"{prefix}-{i:04d}": prompt for i, prompt in enumerate(prompts)}}  # fmt: skip
    atomic_write(out_dir / PROMPTS, lambda p: p.write_text(json.dumps(record, indent=1)))
    return paths


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ddm-sample",
        description="Videos from a trained DDM, monolith or distilled student folder (local or a bucket URI), "
        "as GIF/MP4 files plus a contact sheet.",
    )
    parser.add_argument("model", help="model folder or URI, e.g. outputs/tiny/results/ddm")
    parser.add_argument("--prompt", action="append", default=[], help="a caption (repeatable)")
    parser.add_argument("--prompts-file", help="a text file with one caption per line")
    parser.add_argument("--out", default="samples", help="folder for the videos (default: samples)")
    parser.add_argument("--prefix", default="sample", help="file name prefix (default: sample)")
    parser.add_argument("--num-inference-steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=4.0, help="CFG scale; 1 turns CFG off")
    parser.add_argument("--strategy", default="topk", help="top1 | topk | full | sample | expert:<id> | a schedule")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--formats", nargs="+", default=list(VIDEO_FORMATS), choices=VIDEO_FORMATS)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``ddm-sample`` console command."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        prompts = read_prompts(args.prompt, args.prompts_file)
        pipe = load_model(args.model, args.device)
        settings = {"num_inference_steps": args.num_inference_steps, "guidance_scale": args.guidance_scale,
                    "strategy": args.strategy, "top_k": args.top_k, "seed": args.seed,
                    "batch_size": args.batch_size}  # fmt: skip
        paths = sample_to_folder(pipe, prompts, args.out, args.prefix, args.formats, **settings)
    except (OSError, ValueError) as exc:  # DDMLoadError is a ValueError: a bad folder reads as one line
        sys.exit(f"ddm-sample: error: {exc}")
    print(f"{len(prompts)} video(s), {len(paths)} file(s) -> {args.out} (contact sheet {Path(args.out) / SHEET})")


if __name__ == "__main__":
    main()
