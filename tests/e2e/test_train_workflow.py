"""The training stage through Flyte: specs, the expert map task, the monolith and the router."""

import json
import re

import pandas as pd
import pytest
import torch

from lib.config import RunConfig, replace_in
from lib.models.factory import load_expert, weights_sha256
from lib.train.compute import router_flops_per_step
from lib.train.specs import MONOLITH, ROUTER, SEED, compute_table, expert_specs, monolith_spec, seed_spec
from workflows.train import train_wf


def _cfg(tmp_path, **resources):
    return replace_in(
        RunConfig(),
        data={"num_clips": 60, "frames": 4, "height": 16, "width": 16, "shard_size": 64},
        cluster={"num_clusters": 2, "fine_clusters": 8, "silhouette_sample": 60},
        expert={
            "steps": 4,
            "num_layers": 1,
            "num_heads": 2,
            "head_dim": 16,
            "ffn_dim": 64,
            "batch_size": 4,
            "checkpoint_every": 2,
            "log_every": 2,
            "warmup_steps": 1,
        },
        router={"steps": 4, "batch_size": 8},
        resources=resources,
        output_dir=str(tmp_path / "out"),
    )


def _assignments(n=10, k=2):
    return pd.DataFrame(
        {"clip_id": [f"c{i}" for i in range(n)], "cluster_id": [i % k for i in range(n)], "role": "train"}
    )


def test_specs_match_compute_and_change_with_the_data():
    cfg = replace_in(RunConfig(), cluster={"num_clusters": 2, "fine_clusters": 4})
    specs, mono = expert_specs(cfg, _assignments()), monolith_spec(cfg, _assignments())
    assert [s.name for s in specs] == ["expert-00", "expert-01"] and mono.cluster_id == MONOLITH
    assert mono.expert.steps == 2 * cfg.expert.steps and all(s.expert.steps == cfg.expert.steps for s in specs)
    table = compute_table(specs, mono, 3, (8, 32, 32), 16, 384, cfg.router).set_index("model")
    router = router_flops_per_step(cfg.router, 3, (8, 32, 32), 384, 2) * cfg.router.steps
    assert table.loc[ROUTER, "total_flops"] == router > 0 and table.loc[ROUTER, "steps"] == cfg.router.steps
    # the router is charged to the DDM: experts + router = monolith + router
    assert table.loc["DDM total", "total_flops"] == pytest.approx(table.loc["monolith total", "total_flops"] + router)
    moved = _assignments().assign(cluster_id=[0] * 9 + [1])
    assert expert_specs(cfg, moved)[0].spec_hash() != specs[0].spec_hash()
    assert len({s.seed for s in specs} | {mono.seed}) == 3
    with pytest.raises(ValueError, match="cluster 1 has no training clips"):
        expert_specs(cfg, _assignments().assign(cluster_id=0))


def test_monolith_can_spend_the_budget_as_a_larger_batch_at_the_same_flops():
    cfg = replace_in(RunConfig(), cluster={"num_clusters": 3, "fine_clusters": 6}, expert={"monolith_scaling": "batch"})
    specs, mono = expert_specs(cfg, _assignments(k=3)), monolith_spec(cfg, _assignments(k=3))
    assert (mono.expert.steps, mono.expert.batch_size) == (cfg.expert.steps, 3 * cfg.expert.batch_size)
    assert all(s.expert == cfg.expert for s in specs)
    table = compute_table(specs, mono, 3, (8, 32, 32), 16, 384, cfg.router).set_index("model")
    experts = table.loc[[s.name for s in specs], "total_flops"].sum()
    assert experts == pytest.approx(table.loc["monolith total", "total_flops"])
    assert table.loc["DDM total", "total_flops"] == pytest.approx(experts + table.loc[ROUTER, "total_flops"])
    steps_rule = monolith_spec(replace_in(cfg, expert={"monolith_scaling": "steps"}), _assignments(k=3))
    assert table.loc["monolith total", "total_flops"] == pytest.approx(
        compute_table(specs, steps_rule, 3, (8, 32, 32), 16, 384, cfg.router)
        .set_index("model")
        .loc["monolith", "total_flops"]
    )


@pytest.mark.parametrize("split", ["equal", "by_size"])
@pytest.mark.parametrize("scaling", ["steps", "batch"])
def test_a_seed_model_takes_its_share_of_the_experts_budget_and_the_total_stays_matched(split, scaling):
    cfg = replace_in(RunConfig(), cluster={"num_clusters": 3, "fine_clusters": 6},
                     expert={"steps": 100, "seed_fraction": 0.25, "budget_split": split, "monolith_scaling": scaling})
    rows = _assignments(n=12, k=3).assign(cluster_id=[0] * 6 + [1] * 4 + [2] * 2)
    specs, mono, seed = expert_specs(cfg, rows), monolith_spec(cfg, rows), seed_spec(cfg, rows)
    assert seed.cluster_id == SEED and seed.num_clips == 12 and seed.expert.batch_size == mono.expert.batch_size
    assert seed.expert.steps == round(0.25 * mono.expert.steps)
    table = compute_table(specs, mono, 3, (8, 32, 32), 16, 384, cfg.router, seed).set_index("model")
    router = table.loc[ROUTER, "total_flops"]
    # seed + experts + router = monolith + router: the seed's samples come out of the experts' K x steps
    assert table.loc["DDM total", "total_flops"] == pytest.approx(table.loc["monolith total", "total_flops"] + router)
    assert sum(s.expert.steps for s in specs) == 3 * 100 - 75
    plain = replace_in(cfg, expert={"seed_fraction": 0.0})
    assert seed_spec(plain, rows) is None and mono.spec_hash() == monolith_spec(plain, rows).spec_hash()
    assert expert_specs(plain, rows)[0].spec_hash() != specs[0].spec_hash()  # another budget, another model


def test_experts_branch_from_the_seed_model_through_flyte(tmp_path, capfd):
    cfg = replace_in(_cfg(tmp_path), expert={"seed_fraction": 0.5})
    experts, mono, _ = train_wf(cfg=cfg)
    out = capfd.readouterr().out
    assert "seed model (expert.seed_fraction 0.5): 4 steps at batch 4 on all 40 train clips" in out
    seed = re.search(r"^seed: trained 4 steps on 40 clips, final loss \S+ -> (\S+)$", out, flags=re.M).group(1)
    for expert in experts:  # each starts from the seed's weights, and says so in its record
        info = json.loads((tmp_path / expert.path / "training.json").read_text())
        assert info["init_weights_sha256"] == weights_sha256(seed) and info["steps"] == 2
    assert json.loads((tmp_path / mono.path / "training.json").read_text())["steps"] == 8  # the monolith as before


def test_train_workflow_end_to_end_and_rerun_skips(tmp_path, capfd):
    cfg = _cfg(tmp_path)
    experts, mono, report = train_wf(cfg=cfg)
    assert len(experts) == 2 and all(e is not None for e in experts)
    model = load_expert(experts[0].path)
    info = json.loads((tmp_path / experts[0].path / "training.json").read_text())
    assert info["steps"] == 4 and model.config.num_layers == 1
    assert json.loads((tmp_path / mono.path / "training.json").read_text())["steps"] == 8
    assert report["accuracy"].between(0, 1).all()
    assert report["kind"].value_counts().to_dict() == {"bucket": cfg.router.t_buckets, "exact": 3, "caption_only": 1}
    first = capfd.readouterr().out
    assert "DDM total" in first and "expert-01: trained 4 steps" in first
    train_wf(cfg=cfg)
    second = capfd.readouterr().out
    assert "expert-00: reused" in second and "monolith: reused" in second


def test_failed_expert_with_min_success_ratio_leaves_others(tmp_path, monkeypatch, capfd):
    import lib.train.trainer as trainer

    real_train = trainer.train

    def flaky(data, cfg, out_dir, seed, name, **kw):
        if name == "expert-01":
            raise RuntimeError("simulated GPU failure in expert-01")
        return real_train(data, cfg, out_dir, seed, name, **kw)

    monkeypatch.setattr("lib.train.run.train", flaky)
    experts, mono, _ = train_wf(cfg=_cfg(tmp_path, min_success_ratio=0.5, retries=0))
    assert experts[0] is not None and experts[1] is None and mono is not None
    with pytest.raises(Exception, match="simulated GPU failure in expert-01"):
        train_wf(cfg=_cfg(tmp_path / "strict", min_success_ratio=1.0, retries=0))
    monkeypatch.setattr("lib.train.run.train", real_train)
    capfd.readouterr()
    experts, _, _ = train_wf(cfg=_cfg(tmp_path, min_success_ratio=0.5, retries=0))
    out = capfd.readouterr().out
    assert all(e is not None for e in experts)
    assert "expert-00: reused" in out and "expert-01: trained 4 steps" in out, "a rerun trains only the failed expert"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_experts_on_two_ddp_processes_through_flyte_match_one_process(tmp_path, capfd):
    """resources.expert_nproc_per_node=2 runs each expert as a local torch elastic job (Elastic, gloo on CPU)."""
    from safetensors.torch import load_file

    experts_one, mono_one, _ = train_wf(cfg=_cfg(tmp_path / "one"))
    experts_two, mono_two, _ = train_wf(cfg=_cfg(tmp_path / "two", expert_nproc_per_node=2))
    out = capfd.readouterr().out
    assert out.count("expert-00: trained 4 steps") == 2, "each run trains its own experts"
    weights = "diffusion_pytorch_model.safetensors"
    for one, two in [*zip(experts_one, experts_two, strict=True), (mono_one, mono_two)]:
        wa, wb = load_file(f"{one.path}/{weights}"), load_file(f"{two.path}/{weights}")
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=2e-5, msg=key)
