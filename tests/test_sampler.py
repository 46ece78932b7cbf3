"""The DDM sampler against closed forms: a mixture of isotropic Gaussians whose experts and router are exact
(``lib.sample.gaussian_mixture``: x0 ~ sum_k pi_k N(mu_k, s_k^2 I) in 4 dimensions, latents of shape [1, 1, 2, 2]).
The marginal velocity of the mixture is sum_k p(k | x) v_k(x).
"""

import pytest
import torch

from lib.sample import ExpertHandle, SamplerStats, eps_to_velocity, mix_velocity, routing_weights, sample_ddm
from lib.sample.gaussian_mixture import GaussianMixture, check_strategy
from lib.strategy import parse_schedule, strategy_at

SHAPE = (1, 1, 2, 2)  # C, T, H, W
MUS = torch.tensor([[2.0, 2.0, 2.0, 2.0], [-2.0, -2.0, -2.0, -2.0], [2.0, -2.0, 2.0, -2.0]], dtype=torch.float64)
STDS = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64)
PIS = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
K = 3
MIXTURE = GaussianMixture(MUS, STDS, PIS, SHAPE)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: two intra-op threads only spin-wait against each other when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _flat(x):
    return x.reshape(x.shape[0], -1).double()


exact_eps, exact_x0, exact_velocity, exact_logits = MIXTURE.eps, MIXTURE.x0, MIXTURE.velocity, MIXTURE.logits


def flow_expert(k, calls=None):
    def predict(x, t, cond):
        if calls is not None:
            calls.append((k, x.shape[0]))
        v = exact_velocity(x, t, k)
        return v if cond is None else v + cond.reshape(v.shape)  # cond: an additive shift, [B, 4]

    return ExpertHandle(predict=predict, objective="flow", cluster_id=k)


def eps_expert(k):
    return ExpertHandle(predict=lambda x, t, cond: exact_eps(x, t, k), objective="eps", cluster_id=k)


def _noise(batch, seed=0):
    return torch.randn((batch, *SHAPE), generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def _marginal(x, t, ks=range(K)):
    ks = list(ks)
    logits = exact_logits(x, t)[:, ks]
    post = logits.softmax(1)
    return sum(post[:, [i]].reshape(-1, 1, 1, 1, 1) * exact_velocity(x, t, k).double() for i, k in enumerate(ks))


@pytest.mark.parametrize("t_value", [1.0, 0.7, 0.3, 0.05])
def test_full_strategy_step_equals_the_exact_mixture_velocity(t_value):
    x = _noise(64, seed=1) * 2.5
    t = torch.full((64,), t_value)
    experts = {k: flow_expert(k) for k in range(K)}
    w = routing_weights(exact_logits(x, t), torch.ones(K, dtype=torch.bool), "full")
    v = mix_velocity(experts, w, x, t, None, None, guidance_scale=1.0)
    torch.testing.assert_close(v.double(), _marginal(x, t), atol=1e-5, rtol=1e-5)


def test_full_euler_solve_moves_samples_to_the_component_means():
    n = 3000
    experts = {k: flow_expert(k) for k in range(K)}
    out = sample_ddm(experts, exact_logits, _noise(n, seed=2), None, strategy="full", num_steps=200).x0
    dist = torch.cdist(_flat(out), MUS)  # [n, K]
    nearest = dist.argmin(1)
    fractions = torch.bincount(nearest, minlength=K).double() / n
    torch.testing.assert_close(fractions, PIS, atol=0.04, rtol=0)
    for k in range(K):  # each sample lands inside its component: per-dim spread close to s_k
        spread = (_flat(out)[nearest == k] - MUS[k]).std()
        assert abs(spread - STDS[k]) < 0.35 * STDS[k] + 0.02, (k, spread)


@pytest.mark.parametrize("shift", [0.5, 3.0])
def test_shifted_time_grid_follows_the_shift_map_and_still_solves_the_mixture(shift):
    n, steps = 2000, 100
    experts = {k: flow_expert(k) for k in range(K)}
    res = sample_ddm(experts, exact_logits, _noise(n, seed=2), None, strategy="full", num_steps=steps, shift=shift)
    grid = torch.linspace(1, 0, steps + 1, dtype=torch.float64)[:-1]
    torch.testing.assert_close(res.timesteps.double(), shift * grid / (1 + (shift - 1) * grid), atol=1e-6, rtol=0)
    fractions = torch.bincount(torch.cdist(_flat(res.x0), MUS).argmin(1), minlength=K).double() / n
    torch.testing.assert_close(fractions, PIS, atol=0.04, rtol=0)
    with pytest.raises(ValueError, match="shift must be > 0"):
        sample_ddm(experts, exact_logits, _noise(1), None, strategy="full", shift=0.0)


def test_top1_with_one_surviving_expert_equals_that_expert_alone():
    noise = _noise(16, seed=3)
    experts = {0: None, 1: flow_expert(1), 2: None}
    for strategy in ("top1", "topk", "full"):
        res = sample_ddm(experts, exact_logits, noise, None, strategy=strategy, top_k=2, num_steps=10)
        alone = sample_ddm(experts, None, noise, None, strategy="expert:1", num_steps=10)
        assert torch.equal(res.x0, alone.x0), strategy
        assert torch.all(res.weights[..., 1] == 1) and torch.all(res.weights[..., [0, 2]] == 0)
    x = noise  # and it is the plain Euler solve of v_1
    for i in range(10):
        t = torch.full((16,), 1 - i / 10)
        x = (x.double() + (-1 / 10) * exact_velocity(x, t, 1).double()).float()
    torch.testing.assert_close(alone.x0, x, atol=1e-5, rtol=1e-5)


def test_missing_expert_is_excluded_and_probabilities_renormalised():
    x = _noise(32, seed=4) * 2.5
    t = torch.full((32,), 0.6)
    alive = torch.tensor([True, False, True])
    logits = exact_logits(x, t)
    full = routing_weights(logits, alive, "full")
    p = logits.softmax(1)
    expected = p[:, [0, 2]] / p[:, [0, 2]].sum(1, keepdim=True)
    torch.testing.assert_close(full[:, [0, 2]].double(), expected, atol=1e-6, rtol=1e-6)
    assert torch.all(full[:, 1] == 0)
    # even when the router is sure of the missing expert, its mass goes to the survivors
    sure = torch.tensor([[0.0, 50.0, 1.0]])
    for strategy in ("top1", "topk", "full"):
        w = routing_weights(sure, alive, strategy, top_k=2)
        assert w[0, 1] == 0 and torch.isclose(w.sum(), torch.tensor(1.0))
    assert routing_weights(sure, alive, "top1")[0].tolist() == [0.0, 0.0, 1.0]
    experts = {0: flow_expert(0), 1: None, 2: flow_expert(2)}
    v = mix_velocity(experts, full, x, t, None, None, 1.0)
    torch.testing.assert_close(v.double(), _marginal(x, t, ks=[0, 2]), atol=1e-5, rtol=1e-5)


def test_topk_keeps_k_experts_renormalised():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]))
    w = routing_weights(logits, torch.ones(3, dtype=torch.bool), "topk", top_k=2)
    torch.testing.assert_close(w, torch.tensor([[0.625, 0.375, 0.0], [0.0, 2 / 9, 7 / 9]]))
    w1 = routing_weights(logits, torch.ones(3, dtype=torch.bool), "top1")
    assert w1.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]


def test_oracle_and_fixed_expert_strategies():
    alive = torch.tensor([True, False, True])
    w = routing_weights(None, alive, "oracle", oracle_clusters=torch.tensor([2, 0, 2]))
    assert w.tolist() == [[0, 0, 1], [1, 0, 0], [0, 0, 1]]
    assert routing_weights(None, alive, "expert:2", batch=2).tolist() == [[0, 0, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match=r"expert\(s\) \[1\] are missing"):
        routing_weights(None, alive, "oracle", oracle_clusters=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="needs oracle_clusters"):
        routing_weights(None, alive, "oracle")
    with pytest.raises(ValueError, match="outside"):
        routing_weights(None, alive, "expert:5", batch=1)
    with pytest.raises(ValueError, match="every expert failed"):
        routing_weights(torch.zeros(1, 3), torch.zeros(3, dtype=torch.bool), "full")
    with pytest.raises(ValueError, match="not one of"):
        routing_weights(torch.zeros(1, 3), alive, "best")
    with pytest.raises(ValueError, match="needs a router"):
        sample_ddm({0: flow_expert(0)}, None, _noise(1), None, strategy="top1")


def test_oracle_solve_follows_the_true_component():
    noise = _noise(300, seed=5)
    clusters = torch.arange(300) % K
    experts = {k: flow_expert(k) for k in range(K)}
    out = sample_ddm(experts, None, noise, None, strategy="oracle", num_steps=100, oracle_clusters=clusters).x0
    assert torch.equal(torch.cdist(_flat(out), MUS).argmin(1), clusters)


def test_eps_to_velocity_matches_flow_velocity():
    gen = torch.Generator().manual_seed(6)
    x0 = torch.rand((8, *SHAPE), generator=gen) * 2 - 1
    eps = torch.randn((8, *SHAPE), generator=gen)
    t = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.94, 0.5])
    x_t = (1 - t).view(-1, 1, 1, 1, 1) * x0 + t.view(-1, 1, 1, 1, 1) * eps
    torch.testing.assert_close(eps_to_velocity(eps, x_t, t, clamp=10.0, alpha_floor=0.05), eps - x0)
    # at t = 1, x0 is unidentifiable: the floor and clamp keep v finite and |x0_hat| <= clamp
    v = eps_to_velocity(eps, eps, torch.ones(8), clamp=1.0, alpha_floor=0.05)
    assert torch.isfinite(v).all() and (eps - v).abs().max() <= 1.0 + 1e-6


def test_eps_expert_gives_the_same_velocity_as_the_flow_expert():
    x = _noise(32, seed=7) * 2
    t = torch.full((32,), 0.5)
    w = torch.zeros(32, K)
    w[:, 1] = 1
    v_eps = mix_velocity({0: None, 1: eps_expert(1), 2: None}, w, x, t, None, None, 1.0, clamp=100.0)
    v_flow = mix_velocity({0: None, 1: flow_expert(1), 2: None}, w, x, t, None, None, 1.0)
    torch.testing.assert_close(v_eps, v_flow, atol=1e-5, rtol=1e-5)


def test_cfg_per_expert():
    x = _noise(6, seed=8)
    t = torch.full((6,), 0.4)
    shift = torch.randn(6, 4, generator=torch.Generator().manual_seed(9))
    experts = {k: flow_expert(k) for k in range(K)}
    w = routing_weights(exact_logits(x, t), torch.ones(K, dtype=torch.bool), "full")
    base = mix_velocity(experts, w, x, t, torch.zeros(6, 4), None, 1.0)
    v1 = mix_velocity(experts, w, x, t, shift, torch.zeros(6, 4), guidance_scale=1.0)
    torch.testing.assert_close(v1, base + shift.reshape(x.shape))  # w = 1: the conditional velocity
    v3 = mix_velocity(experts, w, x, t, shift, torch.zeros(6, 4), guidance_scale=3.0)
    torch.testing.assert_close(v3, base + 3 * shift.reshape(x.shape), atol=1e-5, rtol=1e-5)


def test_cfg_runs_cond_and_uncond_in_one_forward_pass():
    calls = []
    experts = {k: flow_expert(k, calls) for k in range(K)}
    noise = _noise(10, seed=10)
    cond, uncond = torch.ones(10, 4), torch.zeros(10, 4)
    res = sample_ddm(experts, exact_logits, noise, cond, uncond, strategy="top1", num_steps=4, guidance_scale=2.0)
    assert res.stats.total_calls == len(calls) and res.stats.total_rows == 2 * 10 * 4
    assert all(rows % 2 == 0 for _, rows in calls)  # each call carries both halves of its sub-batch
    with pytest.raises(ValueError, match="needs an unconditional input"):
        sample_ddm(experts, exact_logits, noise, cond, None, strategy="top1", guidance_scale=2.0)


def test_same_noise_same_output_and_different_noise_differs():
    experts = {k: flow_expert(k) for k in range(K)}
    kw = {"strategy": "topk", "top_k": 2, "num_steps": 8}
    a = sample_ddm(experts, exact_logits, _noise(20, seed=11), None, **kw)
    b = sample_ddm(experts, exact_logits, _noise(20, seed=11), None, **kw)
    c = sample_ddm(experts, exact_logits, _noise(20, seed=12), None, **kw)
    assert torch.equal(a.x0, b.x0) and torch.equal(a.weights, b.weights)
    assert not torch.equal(a.x0, c.x0)


def test_forward_pass_counts_per_strategy():
    batch, steps = 24, 5
    noise = _noise(batch, seed=13)
    cond, uncond = torch.zeros(batch, 4), torch.zeros(batch, 4)
    soft_router = lambda x, t, pooled: torch.tanh(x.reshape(len(x), -1)[:, :K])  # noqa: E731 (no prob underflows)
    rows = {}
    for strategy in ("top1", "topk", "full", "oracle", "expert:0"):
        calls = []
        experts = {k: flow_expert(k, calls) for k in range(K)}
        res = sample_ddm(
            experts, soft_router, noise, cond, uncond, strategy=strategy, top_k=2, num_steps=steps,
            guidance_scale=4.0, oracle_clusters=torch.arange(batch) % K,
        )  # fmt: skip
        assert isinstance(res.stats, SamplerStats) and res.stats.total_calls == len(calls)
        assert res.stats.router_calls == (steps if strategy in ("top1", "topk", "full") else 0)
        assert res.weights.shape == (steps, batch, K) and res.stats.total_calls <= K * steps
        rows[strategy] = res.stats.total_rows
    assert rows["full"] == K * 2 * batch * steps
    assert rows["topk"] == 2 * 2 * batch * steps
    assert rows["top1"] == rows["oracle"] == rows["expert:0"] == 2 * batch * steps
    assert rows["full"] == K * rows["top1"]
    # with the sharp exact router, "full" skips experts whose probability underflows to 0
    sharp = sample_ddm({k: flow_expert(k) for k in range(K)}, exact_logits, noise, None, strategy="full", num_steps=20)
    assert batch * 20 <= sharp.stats.total_rows < K * batch * 20
    solo = sample_ddm({k: flow_expert(k) for k in range(K)}, None, noise, None, strategy="expert:2", num_steps=steps)
    assert solo.stats.expert_calls == {2: steps}  # unselected experts never run


def test_expert_ids_must_match_their_keys():
    with pytest.raises(ValueError, match="cluster ids 0..K-1"):
        sample_ddm({1: flow_expert(1)}, None, _noise(1), None, strategy="expert:1")
    with pytest.raises(ValueError, match="says cluster_id"):
        sample_ddm({0: flow_expert(1)}, None, _noise(1), None, strategy="expert:0")
    with pytest.raises(ValueError, match="objective"):
        ExpertHandle(predict=lambda x, t, c: x, objective="x0", cluster_id=0)


def test_sample_config_fields():
    from lib.config import ConfigError, SampleConfig

    assert SampleConfig().eps_x0_clamp > 0 and 0 < SampleConfig().eps_alpha_floor <= 1
    SampleConfig(strategy="expert:2")
    SampleConfig(strategy="sample>top1@0.5", compare_strategies=["full>topk@0.8>top1@0.3", "sample"])
    with pytest.raises(ConfigError, match=r"sample.compare_strategies: .*needs a switch time.*topk>top1@0.5"):
        SampleConfig(compare_strategies=["topk>top1"])
    for bad in ({"strategy": "expert:x"}, {"eps_x0_clamp": 0.0}, {"eps_alpha_floor": 0.0}, {"shift": 0.0}):
        with pytest.raises(ConfigError, match="sample."):
            SampleConfig(**bad)


def test_a_router_model_plugs_in_as_the_router():
    from lib.models.router import RouterModel

    torch.manual_seed(0)
    router = RouterModel(1, [1, 2, 2], [1, 2, 2], text_dim=3, hidden_dim=8, num_layers=1, num_heads=2, num_clusters=K)
    experts = {k: flow_expert(k) for k in range(K)}
    res = sample_ddm(experts, router, _noise(8), None, pooled=torch.zeros(8, 3), strategy="topk", num_steps=3)
    assert not res.x0.requires_grad and res.stats.router_calls == 3
    assert ((res.weights > 0).sum(-1) == 2).all()
    torch.testing.assert_close(res.weights.sum(-1), torch.ones(3, 8))


def test_schedules_parse_and_pick_the_strategy_by_time():
    assert parse_schedule("topk") == [(float("inf"), "topk")]
    schedule = parse_schedule("full>topk@0.8>top1@0.3")
    assert schedule == [(float("inf"), "full"), (0.8, "topk"), (0.3, "top1")]
    assert [strategy_at(schedule, t) for t in (1.0, 0.81, 0.8, 0.5, 0.3, 0.0)] == [
        "full", "full", "topk", "topk", "top1", "top1"
    ]  # fmt: skip
    for bad, message in [
        ("topk>top1", "needs a switch time"),
        ("topk>top1@x", "not a number"),
        ("topk>top1@1.2", r"\(0, 1\) and decrease"),
        ("full>topk@0.3>top1@0.5", r"\(0, 1\) and decrease"),
        ("topk>best@0.5", "not one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_schedule(bad)


def test_sample_strategy_draws_one_expert_by_inverse_cdf():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).expand(1000, 3)
    u = (torch.arange(1000) + 0.5) / 1000  # evenly spread: the draws' shares are the probabilities to 1/1000
    w = routing_weights(logits, torch.ones(K, dtype=torch.bool), "sample", uniforms=u)
    assert ((w == 0) | (w == 1)).all() and (w.sum(1) == 1).all()
    torch.testing.assert_close(w.mean(0), torch.tensor([0.5, 0.3, 0.2]), atol=1e-3, rtol=0)
    dead = routing_weights(logits, torch.tensor([True, False, True]), "sample", uniforms=u)
    assert (dead[:, 1] == 0).all()  # a missing expert is never drawn; the survivors share its mass
    torch.testing.assert_close(dead.mean(0), torch.tensor([0.5 / 0.7, 0.0, 0.2 / 0.7]), atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="one uniform number per sample"):
        routing_weights(logits, torch.ones(K, dtype=torch.bool), "sample")


def test_sample_strategy_needs_the_callers_numbers_and_is_reproducible_with_them():
    experts, noise = {k: flow_expert(k) for k in range(K)}, _noise(16, seed=21)
    with pytest.raises(ValueError, match="route_uniforms must be"):
        sample_ddm(experts, exact_logits, noise, None, strategy="sample", num_steps=4)
    u = torch.rand(16, 4, generator=torch.Generator().manual_seed(1))
    a = sample_ddm(experts, exact_logits, noise, None, strategy="sample", num_steps=4, route_uniforms=u)
    b = sample_ddm(experts, exact_logits, noise, None, strategy="sample", num_steps=4, route_uniforms=u)
    assert torch.equal(a.x0, b.x0) and torch.equal(a.weights, b.weights)
    assert ((a.weights > 0).sum(-1) == 1).all() and a.stats.total_rows == 16 * 4  # the cost of top-1


def test_a_schedule_switches_strategy_and_reads_the_router_only_when_it_routes():
    experts, noise = {k: flow_expert(k) for k in range(K)}, _noise(8, seed=22)
    soft_router = lambda x, t, pooled: torch.tanh(x.reshape(len(x), -1)[:, :K])  # noqa: E731 (no prob underflows)
    res = sample_ddm(experts, soft_router, noise, None, strategy="full>top1@0.5", num_steps=10)
    selected = (res.weights > 0).sum(-1)  # [steps, B]
    late = res.timesteps <= 0.5
    assert (selected[~late] == K).all() and (selected[late] == 1).all()
    oracle = sample_ddm(experts, soft_router, noise, None, strategy="oracle>top1@0.5", num_steps=10,
                        oracle_clusters=torch.zeros(8, dtype=torch.long))  # fmt: skip
    assert oracle.stats.router_calls == int(late.sum())  # the oracle half needs no router


def test_sample_keeps_the_mixture_where_top1_drifts_to_the_largest_component():
    """The issue's proof: on exact experts and router, the draw's shares match the weights within sampling error
    at top-1's cost, while top-1 (and top-2 of 3) move mass toward the largest component."""
    n, num_steps = 6000, 20
    sample = check_strategy(MIXTURE, "sample", n, num_steps, seed=0)
    late_top1 = check_strategy(MIXTURE, "sample>top1@0.5", n, num_steps, seed=0)
    full = check_strategy(MIXTURE, "full", n, num_steps, seed=0)
    top1 = check_strategy(MIXTURE, "top1", n, num_steps, seed=0)
    for check in (sample, late_top1, full):
        assert max(abs(z) for z in check.z_scores) < 4, (check.strategy, check.shares)
        assert all(0.8 < s < 1.1 for s in check.spreads), (check.strategy, check.spreads)
    assert sample.expert_passes == late_top1.expert_passes == top1.expert_passes == num_steps
    assert full.expert_passes > 2 * num_steps
    assert top1.shares[0] > PIS[0] + 0.2 and top1.z_scores[0] > 20  # the drift is large and shown, not hidden
    assert top1.shares[2] < PIS[2] / 2
    topk = check_strategy(MIXTURE, "topk", n, num_steps, seed=0)
    assert topk.z_scores[2] < -8  # top-2 of 3 starves the smallest component too
