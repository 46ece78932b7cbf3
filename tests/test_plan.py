"""The GPU-pool planner and its simulator: the pool file, the work model, placement and the failure replay."""

import itertools
import math
from dataclasses import replace

import pytest
import yaml

from lib.config import ConfigError, ExpertConfig
from lib.models.factory import build_expert, count_parameters
from lib.plan.placement import (
    PlacementError,
    allocations,
    plan_experts,
    plan_table,
    ring_allreduce_seconds,
    step_seconds,
)
from lib.plan.pool import Failures, GpuType, Network, Pool, load_pool
from lib.plan.simulate import monolith_run, simulate_monolith, simulate_plan, with_failures
from lib.plan.sweep import experts_for, sweep, sweep_figure
from lib.plan.work import training_work
from lib.train.compute import flops_per_step

SHAPE = (4, 8, 8)  # latent frames, height, width
CFG = ExpertConfig(num_layers=2, num_heads=2, head_dim=16, ffn_dim=64, patch_size=[1, 2, 2], steps=1000, batch_size=8)
NO_FAILURES = Failures(mtbf_hours_per_gpu=1e12)


def _work(name="expert-00", **changes):
    return training_work(name, replace(CFG, **changes), 4, SHAPE, 8, 32)


def _gpu(name, count, tflops, price=1.0, memory=80.0, per_node=8, **kw):
    return GpuType(name, count, memory, tflops, price, f"acc-{name}", per_node, mfu=1.0, **kw)


def _pool(*gpus, gbit=400.0, overlap=1.0, failures=NO_FAILURES):
    return Pool(tuple(gpus), Network(gbit, overlap), failures)


def test_pool_file_loads_and_errors_name_the_file_and_field(tmp_path):
    good = {
        "gpus": [
            {
                "name": "H100",
                "count": 8,
                "memory_gib": 80,
                "bf16_tflops": 989,
                "price_per_hour": 3,
                "tokens_per_s": {413: 9.5e5},
            }
        ],  # fmt: skip
        "network": {"inter_node_gbit_s": 100},
    }
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(good))
    pool = load_pool(path)
    assert pool.gpu("H100").tokens_per_s == {"413": 9.5e5}  # YAML's int key, keyed as the benchmark prints it
    assert pool.network.inter_node_gbit_s == 100 and pool.failures == Failures()
    bad = {**good, "gpus": [{**good["gpus"][0], "memory_gib": 0}]}
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"pool\.yaml: pool\.gpus\[0\]\.memory_gib: must be > 0"):
        load_pool(path)
    path.write_text(yaml.safe_dump({**good, "gpus": [{**good["gpus"][0], "vram": 80}]}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) pool\.gpus\[0\]\.vram"):
        load_pool(path)
    with pytest.raises(ConfigError, match="pool file not found"):
        load_pool(tmp_path / "missing.yaml")


def test_the_example_pool_in_configs_is_valid():
    pool = load_pool("configs/pools/mixed.yaml")
    assert [g.name for g in pool.gpus] == ["H100", "A100", "L4"]


def test_work_uses_the_compute_matching_flops_and_counts_the_parameters():
    work = _work()
    assert work.total_flops == pytest.approx(flops_per_step(CFG, 4, SHAPE, 8, 32) * CFG.steps)
    built = count_parameters(build_expert(CFG, 4, 32, SHAPE))
    assert work.parameters == pytest.approx(built, rel=0.05)  # analytic count: matmuls + norms, no small extras
    assert work.checkpointed_bytes_per_sample < work.activation_bytes_per_sample


def test_step_time_is_compute_plus_the_allreduce_the_backward_cannot_hide():
    work = _work()
    gpu = _gpu("G", 8, 1e-3)  # 1 GFLOP/s: compute dominates
    one = step_seconds(work, gpu, 1, Network(400, 0.0), False, 1.0)
    compute = work.batch_size * work.flops_per_sample / 1e9
    assert one == pytest.approx(compute)
    two = step_seconds(work, gpu, 2, Network(400, 0.0), False, 1.0)
    assert two == pytest.approx(compute / 2 + ring_allreduce_seconds(work.gradient_bytes, 2, 1.0))
    hidden = step_seconds(work, gpu, 2, Network(400, 1.0), False, 1.0)
    assert hidden == pytest.approx(compute / 2)  # the all-reduce is far shorter than the backward pass
    assert ring_allreduce_seconds(1e9, 4, 8.0) == pytest.approx(2 * 3 / 4 * 1e9 / 1e9)
    measured = replace(gpu, tokens_per_s={work.size_key: 1000.0})
    per_token = work.flops_per_sample / work.tokens_per_sample
    assert step_seconds(work, measured, 1, Network(), False, 1.0) == pytest.approx(
        work.batch_size * work.flops_per_sample / (1000.0 * per_token)
    )


def test_an_expert_never_spans_nodes_and_checkpointing_is_used_only_to_fit():
    work = _work()
    options = allocations(work, _pool(_gpu("G", 16, 1.0, per_node=4)))
    assert sorted({a.gpus for a in options}) == [1, 2, 4]
    assert not any(a.activation_checkpointing for a in options)
    tight = work.weight_state_bytes + 0.5 * (work.activation_bytes_per_sample + work.checkpointed_bytes_per_sample)
    small = _gpu("S", 1, 1.0, memory=tight / 0.85 / 2**30)
    (option,) = allocations(replace(work, batch_size=1), _pool(small))
    assert option.activation_checkpointing and option.micro_batch == 1
    with pytest.raises(PlacementError, match="expert-00 fits on no GPU type"):
        plan_experts([work], _pool(_gpu("T", 1, 1.0, memory=work.weight_state_bytes / 2**30 / 2)))


def _brute_force_makespan(works, pool):
    """Every way to give each expert its own GPUs at once (no queueing): the best makespan."""
    choices = [allocations(w, pool) for w in works]
    best = math.inf
    for combo in itertools.product(*choices):
        used = {g.name: 0 for g in pool.gpus}
        for a in combo:
            used[a.gpu] += a.gpus
        if all(used[g.name] <= g.count for g in pool.gpus):
            best = min(best, max(a.seconds for a in combo))
    return best


def test_the_plan_reaches_the_best_concurrent_makespan_on_a_mixed_pool():
    works = [_work(f"expert-{i:02d}") for i in range(3)]
    pool = _pool(_gpu("fast", 4, 4.0, price=4.0), _gpu("slow", 8, 1.0, price=0.5))
    plan = plan_experts(works, pool)
    assert plan.makespan_s == pytest.approx(_brute_force_makespan(works, pool))
    assert all(p.start_s == 0 for p in plan.placements)
    used = {g.name: sum(p.gpus for p in plan.placements if p.gpu == g.name) for g in pool.gpus}
    assert all(used[g.name] <= g.count for g in pool.gpus)
    finishes = [p.finish_s for p in plan.placements]
    assert min(finishes) >= 0.5 * max(finishes)  # experts end together, not one early and one late
    table = plan_table(plan)
    assert list(table["name"]) == ["expert-00", "expert-01", "expert-02"]


def test_experts_queue_when_the_pool_is_smaller_than_k_and_bigger_jobs_go_first():
    works = [_work("expert-00", steps=1000), _work("expert-01", steps=600), _work("expert-02", steps=400)]
    pool = _pool(_gpu("G", 2, 1.0, per_node=1))
    plan = plan_experts(works, pool)
    seconds = {w.name: allocations(w, pool)[0].seconds for w in works}
    assert plan.makespan_s == pytest.approx(seconds["expert-00"])  # 600 + 400 queue beside the 1000
    queued = plan.by_name("expert-02") if plan.by_name("expert-02").start_s > 0 else plan.by_name("expert-01")
    first = plan.by_name("expert-01") if queued.name == "expert-02" else plan.by_name("expert-02")
    assert queued.start_s == pytest.approx(first.finish_s) and queued.gpu_ids == first.gpu_ids


def test_failures_are_seeded_and_cost_the_time_since_the_last_checkpoint():
    import numpy as np

    failures = Failures(mtbf_hours_per_gpu=1.0, checkpoint_minutes=6.0, restart_minutes=1.0)
    a = [with_failures(7200.0, 4, failures, np.random.default_rng(3)) for _ in range(3)]
    b = [with_failures(7200.0, 4, failures, np.random.default_rng(3)) for _ in range(3)]
    assert a == b and all(x > 7200.0 for x in a)
    rare = with_failures(7200.0, 4, NO_FAILURES, np.random.default_rng(0))
    assert rare == pytest.approx(7200.0)
    # Expected overhead per failure: restart + half a checkpoint interval; 8 expected failures in 2 h on 4 GPUs
    walls = [with_failures(7200.0, 4, failures, np.random.default_rng(s)) for s in range(300)]
    assert np.mean(walls) > 7200.0 + 4 * (60 + 180)


def test_the_monolith_is_paced_by_its_slowest_gpu_and_leaves_out_types_that_slow_it():
    work = _work(batch_size=64)
    fast_only = monolith_run(work, _pool(_gpu("fast", 8, 10.0)))
    mixed = monolith_run(work, _pool(_gpu("fast", 8, 10.0), _gpu("slow", 8, 0.5)))
    assert mixed.gpus == {"fast": 8} and mixed.seconds == pytest.approx(fast_only.seconds)
    helpful = monolith_run(work, _pool(_gpu("fast", 8, 10.0), _gpu("near", 8, 9.0), gbit=1e9))  # no network cost
    assert helpful.gpus == {"fast": 8, "near": 8}  # 16 ranks at 9/10 speed beat 8 at full speed
    per_rank = math.ceil(64 / 16) * work.flops_per_sample / 9e12
    assert helpful.step_seconds == pytest.approx(per_rank)


def test_simulation_without_failures_replays_the_plan_and_sweep_covers_k_and_bandwidth():
    works = [_work(f"expert-{i:02d}") for i in range(3)]
    pool = _pool(_gpu("fast", 4, 4.0), _gpu("slow", 8, 1.0))
    plan = plan_experts(works, pool)
    outcome = simulate_plan(plan, pool, trials=5)
    assert outcome.mean_makespan_s == pytest.approx(plan.makespan_s)
    assert outcome.mean_cost == pytest.approx(plan.cost)
    mono = simulate_monolith(monolith_run(_work("monolith", batch_size=24), pool), pool, trials=5)
    assert mono.mean_makespan_s == pytest.approx(mono.makespan_s)
    big = _work("monolith", batch_size=64, num_layers=8, head_dim=64)  # many gradient bytes per FLOP
    experts = experts_for(big, 8, 4)
    assert sum(w.total_flops for w in experts) == pytest.approx(big.total_flops)
    table = sweep(big, 8, _pool(_gpu("G", 16, 50.0, per_node=4)), [2, 4], [1.0, 1000.0], trials=3)
    assert len(table) == 4
    slow_net = table[table["inter_node_gbit_s"] == 1.0]["monolith_makespan_s"].iloc[0]
    fast_net = table[table["inter_node_gbit_s"] == 1000.0]["monolith_makespan_s"].iloc[0]
    assert slow_net > fast_net  # the monolith's ring crosses nodes; the experts' groups never do
    assert table.groupby("k")["ddm_makespan_s"].nunique().eq(1).all()  # the DDM does not care about the network
    sweep_figure(table, "test")


def test_planned_specs_group_by_gpu_type_and_count_and_keep_their_identity(tmp_path):
    from lib.plan.experts import gpu_groups, plan_specs, with_placement
    from lib.train.specs import ExpertSpec

    specs = [ExpertSpec(f"expert-{i:02d}", i, 0, 10, "abc", replace(CFG, steps=steps))
             for i, steps in enumerate([1000, 400, 1000])]  # fmt: skip
    pool = tmp_path / "pool.yaml"
    gpus = [{"name": "fast", "count": 4, "memory_gib": 80, "bf16_tflops": 4.0, "price_per_hour": 4.0,
             "accelerator": "acc-fast", "gpus_per_node": 4, "mfu": 1.0},
            {"name": "slow", "count": 8, "memory_gib": 80, "bf16_tflops": 1.0, "price_per_hour": 0.5,
             "accelerator": "acc-slow", "gpus_per_node": 8, "mfu": 1.0}]  # fmt: skip
    pool.write_text(yaml.safe_dump({"gpus": gpus, "network": {"inter_node_gbit_s": 400}}))
    info = {"latent_shape": [4, *SHAPE], "text_encoder": {"max_tokens": 8, "dim": 32}}
    plan = plan_specs(specs, info, str(pool))
    works = [_work(s.name, steps=s.expert.steps) for s in specs]  # the specs' work, on the latents of ``info``
    assert plan.placements == plan_experts(works, load_pool(pool)).placements
    groups = gpu_groups(specs, list(plan.placements))
    assert sorted(i for members in groups.values() for i in members) == [0, 1, 2]
    for (gpu, gpus), members in groups.items():  # one map task each: every member asks for the same resources
        assert {(plan.by_name(specs[i].name).gpu, plan.by_name(specs[i].name).gpus) for i in members} == {(gpu, gpus)}
    placed = [with_placement(s, plan.by_name(s.name)) for s in specs]
    assert [p.expert.micro_batch for p in placed] == [plan.by_name(s.name).micro_batch for s in specs]
    assert [p.spec_hash() for p in placed] == [s.spec_hash() for s in specs], "run-only: the same model"
