"""Router network and trainer: accuracy falls from high to chance as t -> 1, save/load, report schema (buckets,
exact t, the caption-only ceiling), determinism, mass at t = 1, and its training FLOPs.

The built-in clips stand in for clusters through a semantic attribute, the background colour (9 classes). The scene
family (4 classes) is a weaker stand-in at 16x16: on dark backgrounds its stripes/checkers change pixels by only
about +-0.04, so even clean clips are hard to tell apart, which would blur the t-dependence this file tests.
"""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pandera.errors
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics.functional.classification import multiclass_calibration_error

from data_schemas.router import BUCKET, CAPTION_ONLY, EXACT, RouterReport
from lib.config import ConfigError, RouterConfig
from lib.data.procedural import BG_RGB, iter_builtin_clips
from lib.models.router import RouterModel
from lib.train.compute import router_flops_per_step
from lib.train.router import (
    TRAINING_INFO,
    caption_only_row,
    expected_calibration_error,
    report_line,
    router_report_html,
    router_timesteps,
    sample_timesteps,
    train_router,
)

BACKGROUNDS = list(BG_RGB)
TEXT_DIM = 8


@pytest.fixture(scope="module")
def one_thread():
    """A 50k-parameter model trains faster on one thread; two threads spin-wait when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _builtin(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    clips = list(iter_builtin_clips(seed, n, 8, 16, 16))
    pixels = torch.from_numpy(np.stack([c.frames for c in clips])).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    labels = torch.tensor([BACKGROUNDS.index(c.attributes["background"]) for c in clips])
    return pixels, labels


def _cfg(**kw) -> RouterConfig:
    # uniform t without mass at t = 1 unless asked: the t-dependence tests want every t trained alike
    base = {"num_layers": 2, "num_heads": 2, "hidden_dim": 48, "patch_size": [2, 4, 4], "steps": 300}
    return RouterConfig(**{**base, "batch_size": 32, "lr": 3e-3, "t_buckets": 10, "endpoint_mass": 0.0, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    latents, labels = _builtin(400)
    pooled = torch.zeros(len(labels), TEXT_DIM)  # no text: the router has to read x_t
    out = tmp_path_factory.mktemp("router")
    result = train_router(latents, pooled, labels, _cfg(), len(BACKGROUNDS), seed=0, out_dir=out, eval_fraction=0.25)
    return result, latents, labels


def _kind(report: pd.DataFrame, kind: str) -> pd.DataFrame:
    return report[report[RouterReport.kind] == kind].reset_index(drop=True)


def test_accuracy_is_high_near_t0_and_falls_to_chance_as_t_goes_to_1(trained):
    result, latents, labels = trained
    report = _kind(RouterReport.validate(result.report), BUCKET)
    acc = report[RouterReport.accuracy].to_numpy()
    assert len(report) == 10 and (report[RouterReport.n] == 4 * 100).all()  # 100 held-out clips x 4 draws
    assert acc[:3].min() >= 0.9, acc
    assert acc[-1] <= 0.5 and acc[-1] < acc[0] - 0.4, acc
    assert acc[:5].mean() > acc[5:].mean() + 0.15, acc
    confidence = report[RouterReport.mean_max_prob].to_numpy()
    assert confidence[-1] < confidence[0] - 0.4  # the router knows it is guessing near t = 1
    assert (report[RouterReport.ece] < 0.15).all()
    # at t = 1 exactly, x_t is pure noise and (without text) the router can only guess: accuracy near the
    # majority-class rate, far from the clean-clip accuracy
    router = RouterModel.from_pretrained(result.model_dir).eval()
    held = torch.tensor(result.eval_indices)
    noise = torch.randn(latents[held].shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred = router(noise, torch.ones(len(held)), torch.zeros(len(held), TEXT_DIM)).argmax(1)
    majority = torch.bincount(labels).max().item() / len(labels)
    assert (pred == labels[held]).float().mean().item() <= majority + 0.1


def test_router_reads_the_text_when_x_t_is_noise(tmp_path, one_thread):
    latents, labels = _builtin(200)
    pooled = torch.nn.functional.one_hot(labels, len(BACKGROUNDS)).float()  # a caption that names the cluster
    cfg = _cfg(steps=100, t_buckets=4, endpoint_mass=RouterConfig().endpoint_mass)  # the default mass at t = 1
    result = train_router(latents, pooled, labels, cfg, len(BACKGROUNDS), 0, tmp_path)
    assert _kind(result.report, BUCKET)[RouterReport.accuracy].iloc[-1] >= 0.9  # t in [0.75, 1]: only the text tells
    at_1 = _kind(result.report, EXACT).set_index(RouterReport.t_low).loc[1.0]
    assert at_1[RouterReport.accuracy] >= 0.9  # pure noise: the caption alone names the cluster
    assert _kind(result.report, CAPTION_ONLY)[RouterReport.accuracy].iloc[0] == 1.0  # and a linear probe sees it


def test_report_has_exact_t_rows_and_the_caption_ceiling_on_the_same_held_out_clips(trained):
    result, latents, labels = trained
    report = RouterReport.validate(result.report)
    assert report[RouterReport.kind].tolist() == [BUCKET] * 10 + [EXACT] * 3 + [CAPTION_ONLY]
    exact = _kind(report, EXACT)
    assert exact[RouterReport.t_low].tolist() == [0.9, 0.95, 1.0] == exact[RouterReport.t_high].tolist()
    assert (exact[RouterReport.n] == 4 * 100).all()  # 100 held-out clips x 4 draws, as the buckets
    # at exactly t = 1 and without text the router guesses: no better than the last bucket
    assert exact[RouterReport.accuracy].iloc[-1] <= _kind(report, BUCKET)[RouterReport.accuracy].iloc[-1] + 0.1
    caption = _kind(report, CAPTION_ONLY).iloc[0]
    held = torch.tensor(result.eval_indices)
    assert caption[RouterReport.n] == len(held) == 100 and caption[RouterReport.t_low] == 1.0
    # fitted on the router's train clips, scored on its held-out ones: with no text (pooled zeros) the caption can
    # only name the train split's majority cluster, so the ceiling is that cluster's share of the held-out clips
    train = torch.tensor(sorted(set(range(len(labels))) - set(result.eval_indices)))
    majority = torch.bincount(labels[train]).argmax()
    assert caption[RouterReport.accuracy] == pytest.approx((labels[held] == majority).float().mean().item())
    zeros = torch.zeros(len(labels), TEXT_DIM)
    again = caption_only_row(zeros[train], labels[train], zeros[held], labels[held], len(BACKGROUNDS))
    assert again[RouterReport.accuracy] == caption[RouterReport.accuracy] and again[RouterReport.n] == 100


def test_saved_router_loads_with_from_pretrained(trained):
    result, latents, _ = trained
    assert {"config.json", "diffusion_pytorch_model.safetensors", TRAINING_INFO} <= {
        p.name for p in result.model_dir.iterdir()
    }
    info = json.loads((result.model_dir / TRAINING_INFO).read_text())
    assert info["timestep_sampling"] == "uniform" and info["num_eval"] == 100 and info["num_train"] == 300
    router = RouterModel.from_pretrained(result.model_dir)
    assert router.config.num_clusters == len(BACKGROUNDS) and list(router.config.sample_shape) == [8, 16, 16]
    assert len(result.losses) == 300 and np.mean(result.losses[-30:]) < np.mean(result.losses[:30])


def test_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = RouterModel(3, [4, 8, 8], [2, 4, 4], text_dim=5, hidden_dim=16, num_layers=1, num_heads=2, num_clusters=3)
    gen = torch.Generator().manual_seed(0)
    x, t, pooled = torch.randn(4, 3, 4, 8, 8, generator=gen), torch.rand(4, generator=gen), torch.randn(4, 5)
    model.save_pretrained(tmp_path)
    again = RouterModel.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(model.eval()(x, t, pooled), again.eval()(x, t, pooled))
        assert model(x, t, pooled).shape == (4, 3)
        assert not torch.equal(model(x, t, pooled), model(x, 1 - t, pooled))  # the timestep is read
        assert not torch.equal(model(x, t, pooled), model(x, t, pooled + 1))  # so is the text


def test_router_model_refuses_bad_shapes():
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        RouterModel(3, [8, 16, 16], [3, 4, 4])
    model = RouterModel(3, [4, 8, 8], [2, 4, 4], text_dim=5, hidden_dim=16, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match="hidden_states"):
        model(torch.zeros(1, 3, 4, 8, 16), torch.zeros(1), torch.zeros(1, 5))
    with pytest.raises(ValueError, match="pooled_text"):
        model(torch.zeros(1, 3, 4, 8, 8), torch.zeros(1), torch.zeros(1, 4))


def test_training_is_deterministic(tmp_path, one_thread):
    latents, labels = _builtin(40, seed=3)
    pooled = torch.randn(40, TEXT_DIM, generator=torch.Generator().manual_seed(0))
    cfg = _cfg(steps=8, t_buckets=2, timestep_sampling="logit_normal")
    a = train_router(latents, pooled, labels, cfg, len(BACKGROUNDS), seed=5, out_dir=tmp_path / "a")
    b = train_router(latents, pooled, labels, cfg, len(BACKGROUNDS), seed=5, out_dir=tmp_path / "b")
    c = train_router(latents, pooled, labels, cfg, len(BACKGROUNDS), seed=6, out_dir=tmp_path / "c")
    assert a.losses == b.losses and a.eval_indices == b.eval_indices
    pd.testing.assert_frame_equal(a.report, b.report)
    wa, wb = (RouterModel.from_pretrained(r.model_dir).state_dict() for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.losses != c.losses and a.eval_indices != c.eval_indices
    assert json.loads((a.model_dir / TRAINING_INFO).read_text())["timestep_sampling"] == "logit_normal"


def test_bad_inputs_are_refused(tmp_path):
    latents, labels = torch.zeros(6, 3, 4, 8, 8), torch.zeros(6, dtype=torch.int64)
    pooled, cfg = torch.zeros(6, 4), _cfg(steps=1, patch_size=[2, 4, 4])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        train_router(latents, pooled, labels + 2, cfg, 2, 0, tmp_path)
    with pytest.raises(ValueError, match="labels must be int64"):
        train_router(latents, pooled, labels.int(), cfg, 2, 0, tmp_path)
    with pytest.raises(ValueError, match="pooled must be"):
        train_router(latents, pooled[:5], labels, cfg, 2, 0, tmp_path)
    with pytest.raises(ValueError, match="eval_fraction"):
        train_router(latents, pooled, labels, cfg, 2, 0, tmp_path, eval_fraction=1.0)
    with pytest.raises(ValueError, match="not divisible"):
        train_router(latents, pooled, labels, _cfg(patch_size=[3, 4, 4]), 2, 0, tmp_path)


def _report() -> pd.DataFrame:
    return pd.DataFrame(
        {"kind": [BUCKET, BUCKET, EXACT, EXACT, CAPTION_ONLY], "t_low": [0.0, 0.5, 0.9, 1.0, 1.0],
         "t_high": [0.5, 1.0, 0.9, 1.0, 1.0], "accuracy": [0.9, 0.2, 0.5, 0.4, 0.95],
         "ece": [0.05, 0.02, 0.1, 0.3, 0.02], "mean_max_prob": [0.9, 0.3, 0.6, 0.7, 0.93], "n": [40, 40, 40, 40, 10]}
    )  # fmt: skip


def test_report_schema_is_strict_and_checks_ranges():
    good = _report()
    RouterReport.validate(good)
    RouterReport.validate(good.iloc[:2])  # buckets alone (evaluate_router without exact t) are a report too
    for bad in (
        good.assign(extra=1),
        good.assign(accuracy=[1.2, 0.2, 0.5, 0.4, 0.95]),
        good.assign(n=[0, 40, 40, 40, 10]),
        good.assign(kind=[BUCKET, BUCKET, "exactly", EXACT, CAPTION_ONLY]),  # unknown kind
        pd.concat([good.iloc[1::-1], good.iloc[2:]]).reset_index(drop=True),  # buckets out of order
        good.assign(t_high=[0.5, 1.0, 0.95, 1.0, 1.0]),  # an exact row that is not a point
        good.assign(t_low=[0.0, 0.5, 1.0, 1.0, 1.0], t_high=[0.5, 1.0, 1.0, 1.0, 1.0]),  # t = 1 reported twice
        good.assign(t_low=[0.0, 0.5, 0.9, 1.0, 0.9], t_high=[0.5, 1.0, 0.9, 1.0, 0.9]),  # caption row not at t = 1
        pd.concat([good, good.iloc[[4]]]).reset_index(drop=True),  # two caption rows
    ):
        with pytest.raises((pandera.errors.SchemaError, pandera.errors.SchemaErrors)):
            RouterReport.validate(bad)


def test_report_line_and_deck_name_the_endpoint_and_the_ceiling():
    line = report_line(_report())
    assert line == (
        "[0.0,0.5) 0.90, [0.5,1.0) 0.20; exact t 0.9 0.50, 1 0.40 (mean max prob at 1: 0.70); caption only 0.95"
    )
    page = router_report_html(_report())
    assert "caption_only" in page and "<table" in page and "mean max prob at 1: 0.70" in page


def test_endpoint_mass_puts_exactly_that_share_of_every_batch_at_t1_deterministically():
    cfg = _cfg(endpoint_mass=0.25)
    a = router_timesteps(32, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, router_timesteps(32, cfg, torch.Generator().manual_seed(3)))
    assert (a == 1.0).sum() == 8 and (a[8:] < 1.0).all() and (a >= 0).all()
    # the remaining draws are the configured sampling's, unchanged: no mass means the old times exactly
    plain = router_timesteps(32, _cfg(), torch.Generator().manual_seed(3))
    assert torch.equal(plain, sample_timesteps(32, "uniform", torch.Generator().manual_seed(3)))
    assert torch.equal(a[8:], plain[8:])
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="router.endpoint_mass"):
            _cfg(endpoint_mass=bad)
    with pytest.raises(ConfigError, match="router.report_t"):
        _cfg(report_t=[1.0, 1.0])


def test_endpoint_mass_is_recorded_and_changes_training(tmp_path, one_thread):
    latents, labels = _builtin(40, seed=3)
    pooled = torch.randn(40, TEXT_DIM, generator=torch.Generator().manual_seed(0))
    a = train_router(latents, pooled, labels, _cfg(steps=4, t_buckets=2), len(BACKGROUNDS), 5, tmp_path / "a")
    b = train_router(latents, pooled, labels, _cfg(steps=4, t_buckets=2, endpoint_mass=0.5), len(BACKGROUNDS), 5,
                     tmp_path / "b")  # fmt: skip
    assert a.losses != b.losses and a.eval_indices == b.eval_indices  # same split, other times
    assert json.loads((b.model_dir / TRAINING_INFO).read_text())["endpoint_mass"] == 0.5


def test_router_flops_per_step_counts_what_the_model_computes():
    cfg = RouterConfig(num_layers=2, num_heads=2, hidden_dim=32, patch_size=[2, 4, 4], batch_size=5)
    model = RouterModel(4, [4, 8, 8], [2, 4, 4], text_dim=16, hidden_dim=32, num_layers=2, num_heads=2, num_clusters=3)
    gen = torch.Generator().manual_seed(0)
    x, t, pooled = torch.randn(5, 4, 4, 8, 8, generator=gen), torch.rand(5, generator=gen), torch.randn(5, 16)
    with FlopCounterMode(display=False) as counter:  # with grad: no_grad takes a fused path the counter cannot see
        model(x, t, pooled)
    forward = router_flops_per_step(cfg, 4, (4, 8, 8), 16, 3) / 3  # one forward over the batch of 5
    tokens = 1 + 2 * 2 * 2
    scores = 4 * 2 * 32 * tokens**2 * 5  # attention scores and values: not every backend reports them to the counter
    assert forward - scores <= counter.get_total_flops() <= forward
    assert router_flops_per_step(replace(cfg, steps=1, batch_size=10), 4, (4, 8, 8), 16, 3) == pytest.approx(
        2 * router_flops_per_step(cfg, 4, (4, 8, 8), 16, 3)
    )


def test_ece_matches_torchmetrics():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 4, generator=gen), dim=1)
    labels = torch.randint(4, (500,), generator=gen)
    ours = expected_calibration_error(probs, labels, n_bins=10)
    theirs = multiclass_calibration_error(probs, labels, num_classes=4, n_bins=10, norm="l1").item()
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert expected_calibration_error(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) == 0.0


def test_timestep_sampling():
    gen = torch.Generator().manual_seed(0)
    for method in ("uniform", "logit_normal"):
        t = sample_timesteps(4000, method, gen)
        assert 0 < t.min() and t.max() < 1 and abs(t.median().item() - 0.5) < 0.03
    mid = ((sample_timesteps(4000, "logit_normal", gen) - 0.5).abs() < 0.25).float().mean()
    assert mid > 0.6  # logit-normal concentrates on mid t (uniform: 0.5)
    with pytest.raises(ValueError, match="not one of"):
        sample_timesteps(1, "cosine", gen)
