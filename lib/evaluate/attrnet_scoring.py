"""What AttrNet says about videos: its answers per attribute, whether it sees an object, and how often those
answers match a prompt (prompt-attribute accuracy, ``object_found``), beside what guessing would score.

Apart from the network and its training because every evaluation reads these, and none of them trains.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from lib.evaluate.attrnet import (
    ABSENT,
    ATTRIBUTE_VOCAB,
    CLAIM_HEAD,
    HEADLINE_ATTRIBUTES,
    AttributeTableError,
    AttrNet,
    encode_attributes,
)
from lib.features.batch import as_video_batch


@torch.no_grad()
def predict_attributes(model: AttrNet, videos: np.ndarray | torch.Tensor, batch_size: int = 128) -> pd.DataFrame:
    """Most likely class name per attribute for each video (object heads may answer ``ABSENT``)."""
    clips = as_video_batch(videos)
    model.eval()
    preds: dict[str, list[torch.Tensor]] = {k: [] for k in model.vocab}
    for s in range(0, clips.shape[0], batch_size):
        for k, logits in model(clips[s : s + batch_size]).items():
            preds[k].append(logits.argmax(dim=1))
    return pd.DataFrame({k: [model.vocab[k][i] for i in torch.cat(v).tolist()] for k, v in preds.items()})


def claims_object(model: AttrNet, videos: np.ndarray | torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """Per video, whether the net says an object is there: its ``CLAIM_HEAD`` (colour) answers anything but ABSENT.

    One head decides, so that "claims an object" is a single yes/no per video. Colour, because it is what a person
    sees of an object first and what ``object_found`` scores. The other object heads agree with it: on the negatives
    of the measured run at most 2 % of videos had some object head answer while colour said ``ABSENT``.

    Returns:
        bool [N].
    """
    return predict_attributes(model, videos, batch_size)[CLAIM_HEAD].to_numpy() != ABSENT


def attribute_hits(
    model: AttrNet, videos: np.ndarray | torch.Tensor, target_attributes: pd.DataFrame, batch_size: int = 128
) -> pd.DataFrame:
    """Per video: does the net's answer match the target (the prompt's), per head; and is an object of a target
    colour there.

    An ``ABSENT`` answer never matches a target, so a video without a visible object scores 0 on every object
    attribute instead of a lucky guess.

    Args:
        videos: uint8 [N, T, H, W, 3].
        target_attributes: N rows with the attribute columns (e.g. the prompts' ClipAttributes rows).
        batch_size: videos per forward pass.

    Returns:
        N rows of booleans: one column per head, and ``object_found``: the ``CLAIM_HEAD`` (colour) names a colour
        the target asked for — object 1's, or object 2's (``color2``) where there is one, since the net reads one
        object and cannot tell which of two is "object 1".
    """
    if len(target_attributes) != len(videos):
        raise AttributeTableError(f"attributes: {len(target_attributes)} target rows for {len(videos)} videos")
    targets = target_attributes.reset_index(drop=True)
    encode_attributes(targets, model.vocab)  # refuses missing columns and unknown values with a clear error
    pred = predict_attributes(model, videos, batch_size)
    hits = pd.DataFrame({k: pred[k].to_numpy() == targets[k].to_numpy() for k in model.vocab})
    found = hits[CLAIM_HEAD].to_numpy()
    if "color2" in targets:
        found = found | ((pred[CLAIM_HEAD] == targets["color2"]) & (targets["color2"] != "")).to_numpy()
    hits["object_found"] = found
    return hits


def attribute_accuracy(
    model: AttrNet, videos: np.ndarray | torch.Tensor, target_attributes: pd.DataFrame, batch_size: int = 128
) -> dict[str, float]:
    """Share of videos whose predicted attribute matches the target (``attribute_hits``), with summaries.

    Args:
        videos: uint8 [N, T, H, W, 3].
        target_attributes: N rows with the attribute columns (e.g. the prompts' ClipAttributes rows).
        batch_size: videos per forward pass.

    Returns:
        per attribute (``scene``, ``background``, ``shape``, ``color``, ``size``, ``motion``); ``mean`` over all of
        them; ``mean4`` over ``HEADLINE_ATTRIBUTES``; ``object_found``.
    """
    hits = attribute_hits(model, videos, target_attributes, batch_size)
    acc = {k: float(hits[k].mean()) for k in model.vocab}
    return _with_summaries(acc, float(hits["object_found"].mean()))


def _with_summaries(per_attribute: dict[str, float], object_found: float) -> dict[str, float]:
    """One place for the summary keys, so scores and chance levels always carry the same ones."""
    return {
        **per_attribute,
        "mean": float(np.mean(list(per_attribute.values()))),
        "mean4": float(np.mean([per_attribute[k] for k in HEADLINE_ATTRIBUTES])),
        "object_found": object_found,
    }


def chance_accuracy(vocab: dict[str, list[str]] | None = None) -> dict[str, float]:
    """Accuracy of uniform guessing among the real classes (not ``ABSENT``), with the summaries of
    ``attribute_accuracy`` (``object_found`` as for one-object prompts)."""
    vocab = vocab or ATTRIBUTE_VOCAB
    chance = {k: 1.0 / len([c for c in v if c != ABSENT]) for k, v in vocab.items()}
    return _with_summaries(chance, chance[CLAIM_HEAD])
