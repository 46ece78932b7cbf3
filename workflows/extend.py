"""Grow a DDM with new data: ``pyflyte run workflows/extend.py extend_wf --cfg configs/tiny-extend.yaml``.

The parent is the DDM this config's run trains (reused from ``output_dir`` when ``make run`` or an earlier execution
trained it). The new data (``extend.*``) is ingested, encoded with the parent's codec, embedded with the parent's
embedders and fitted state, and placed: clips close to a parent centroid join its cluster, the rest found
``extend.new_clusters`` new clusters. Only the new clusters' experts train (and, with ``extend.continue_steps`` > 0,
the parent experts whose clusters new clips joined continue on their old and new clips); the router is refit over
all clusters; the grown folder records its lineage in ``ddm.json``.
"""

from flytekit import workflow
from flytekit.types.directory import FlyteDirectory

from lib.config import RunConfig
from tasks.encode import encode_clips
from tasks.extend import continue_experts, extension_data, grow_ddm_task, place_new_data, refit_router
from tasks.ingest import ingest_clips
from tasks.train import train_experts
from workflows.cluster import cluster_stage
from workflows.train import ddm_stage


@workflow
def extend_wf(cfg: RunConfig = RunConfig()) -> FlyteDirectory:
    """Returns the grown DDM folder."""
    _, _, _, encoded, assignments, _, centroids = cluster_stage(cfg=cfg)
    parent, _, _ = ddm_stage(cfg=cfg, encoded=encoded, assignments=assignments, centroids=centroids)
    new_data = extension_data(cfg=cfg)
    shards, index, _, _, _ = ingest_clips(cfg=new_data, seed=cfg.seed, output_dir=cfg.output_dir, videos=[], cuts=[])
    # the parent folder carries the codec its experts were trained with (``vae/``; nothing for the pixel codec)
    new_encoded, _ = encode_clips(cfg=cfg.encode, shards=shards, index=index, codec=parent, output_dir=cfg.output_dir)
    new_assignments, all_centroids, specs, continued_specs, placement = place_new_data(
        cfg=cfg, parent=parent, parent_assignments=assignments, shards=shards, encoded=new_encoded, index=index
    )
    experts = train_experts(
        cfg=cfg, specs=specs, encoded=new_encoded, assignments=new_assignments, placements=[], seed=None
    )
    continued = continue_experts(
        cfg=cfg,
        specs=continued_specs,
        parent=parent,
        parent_encoded=encoded,
        parent_assignments=assignments,
        encoded=new_encoded,
        assignments=new_assignments,
    )
    router = refit_router(
        cfg=cfg.router,
        seed=cfg.seed,
        centroids=all_centroids,
        parent_encoded=encoded,
        parent_assignments=assignments,
        encoded=new_encoded,
        assignments=new_assignments,
        output_dir=cfg.output_dir,
    )
    return grow_ddm_task(
        encode_cfg=cfg.encode,
        parent=parent,
        specs=specs,
        experts=experts,
        continued_specs=continued_specs,
        continued=continued,
        router=router,
        encoded=new_encoded,
        centroids=all_centroids,
        placement=placement,
        output_dir=cfg.output_dir,
    )
