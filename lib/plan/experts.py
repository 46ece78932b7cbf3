"""The run's expert specs on a planned GPU pool: their plan, the groups that share a GPU type and count, and each
spec with its planned micro-batch.

Why groups: one map task asks every element for the same resources, so the training workflow runs one map task per
(GPU type, GPU count) of the plan and gathers the experts back in cluster order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lib.plan.placement import Placement, Plan, plan_experts
from lib.plan.pool import load_pool
from lib.plan.work import training_work
from lib.train.specs import ExpertSpec


def plan_specs(specs: list[ExpertSpec], codec_info: dict[str, Any], pool: str) -> Plan:
    """Each spec's GPU type, GPU count and micro-batch on the pool file ``pool``, for latents and text of the
    encoded folder's ``codec_info`` (``lib.encode.store.read_codec_info``)."""
    c, t, h, w = codec_info["latent_shape"]
    text = codec_info["text_encoder"]
    works = [training_work(s.name, s.expert, c, (t, h, w), text["max_tokens"], text["dim"]) for s in specs]
    return plan_experts(works, load_pool(pool))


def gpu_groups(specs: list[ExpertSpec], placements: list[Placement]) -> dict[tuple[str, int], list[int]]:
    """Indices of the specs that share a GPU type and count: each group is one map task with those resources."""
    by_name = {p.name: p for p in placements}
    groups: dict[tuple[str, int], list[int]] = {}
    for i, spec in enumerate(specs):
        p = by_name[spec.name]
        groups.setdefault((p.gpu, p.gpus), []).append(i)
    return groups


def with_placement(spec: ExpertSpec, p: Placement) -> ExpertSpec:
    """The spec with its planned micro-batch: run-only fields, so the spec's identity (and its model) is unchanged."""
    expert = dataclasses.replace(spec.expert, micro_batch=p.micro_batch,
                                 activation_checkpointing=p.activation_checkpointing)  # fmt: skip
    return dataclasses.replace(spec, expert=expert)
