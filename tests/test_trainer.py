import io
import json
import math
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tiny_clips import TINY_EXPERT, tiny_train_data

from data_schemas.train import TrainingLog
from lib.config import ExpertConfig
from lib.io import ChecksumError
from lib.models.factory import TRAINING_INFO, ExpertLoadError, load_expert, weights_sha256
from lib.models.schedule import ema_decay_at, lr_at
from lib.train import checkpoint as ckpt
from lib.train.trainer import (
    BatchSampler,
    NonFiniteLossError,
    TrainCallback,
    TrainData,
    clip_gradients,
    flow_matching_batch,
    sample_timesteps,
    train,
    update_ema,
)

TINY = TINY_EXPERT


@pytest.fixture(scope="module")
def data() -> TrainData:
    """16 built-in clips with random caption tokens; no text encoder involved."""
    return tiny_train_data(16)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


# ---- pure helpers ---------------------------------------------------------------------------------------------


def test_lr_warmup_then_constant_or_cosine():
    cfg = ExpertConfig(lr=1.0, warmup_steps=4, steps=14)
    assert [lr_at(s, cfg) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = replace(cfg, lr_schedule="cosine")
    assert lr_at(3, cos) == 1.0
    assert lr_at(13, cos) == pytest.approx(0.1)  # floor at the last step
    assert lr_at(8, cos) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 4 / 9)))
    assert lr_at(0, replace(cfg, warmup_steps=0)) == 1.0


def test_ema_math_on_a_toy_tensor():
    ema, model = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(ema.weight)
    torch.nn.init.ones_(model.weight)
    update_ema(ema, model, 0.9)
    assert ema.weight.item() == pytest.approx(0.1)
    update_ema(ema, model, 0.9)
    assert ema.weight.item() == pytest.approx(0.19)
    update_ema(ema, model, 0.0)
    assert ema.weight.item() == 1.0
    assert ema_decay_at(0, 0.99) == pytest.approx(0.1)  # warm-up: (1 + 0) / (10 + 0)
    assert ema_decay_at(10_000, 0.99) == 0.99


@pytest.mark.parametrize("scale", [0.3, 1.0 - 5e-7, 1.0, 1.0 + 5e-7, 1.0 + 1e-6, 3.0])
def test_clip_gradients_is_clip_grad_norm_bit_for_bit(scale: float):
    """Below, at and just around max_norm (inside clip_grad_norm_'s own + 1e-6), as well as far above it."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(shape, generator=gen) for shape in ((7, 5), (13,), (3, 4, 2))]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    grads = [g * (scale / total) for g in grads]  # total norm = scale, max_norm 1
    ours, theirs = ([torch.nn.Parameter(torch.zeros_like(g)) for g in grads] for _ in range(2))
    for a, b, g in zip(ours, theirs, grads, strict=True):
        a.grad, b.grad = g.clone(), g.clone()
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0, foreach=True)
    norm = torch.nn.utils.get_total_norm([p.grad for p in ours], foreach=True)
    clip_gradients(ours, 1.0, norm, norm.item())
    assert norm.item() == expected.item()
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.grad, b.grad)
    if scale > 1.01:
        assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours])).item() == pytest.approx(1.0)


def test_flow_matching_batch_and_timesteps():
    x0, eps = torch.full((2, 3, 2, 4, 4), 0.5), torch.full((2, 3, 2, 4, 4), -1.0)
    x_t, v = flow_matching_batch(x0, torch.tensor([0.0, 1.0]), eps)
    assert torch.equal(x_t[0], x0[0]) and torch.equal(x_t[1], eps[1])  # t = 0 data, t = 1 pure noise
    assert torch.equal(v, eps - x0)
    x_mid, target = flow_matching_batch(x0, torch.tensor([0.25, 0.25]), eps, objective="eps")
    assert torch.allclose(x_mid, 0.75 * x0 + 0.25 * eps) and torch.equal(target, eps)
    with pytest.raises(ValueError, match="objective"):
        flow_matching_batch(x0, torch.tensor([0.0, 1.0]), eps, objective="x0")
    for mode in ("uniform", "logit_normal"):
        a = sample_timesteps(4000, mode, torch.Generator().manual_seed(1))
        assert torch.equal(a, sample_timesteps(4000, mode, torch.Generator().manual_seed(1)))
        assert 0.0 <= a.min() and a.max() <= 1.0 and abs(a.median().item() - 0.5) < 0.03
    ln = sample_timesteps(4000, "logit_normal", torch.Generator().manual_seed(1))
    assert ((ln > 0.25) & (ln < 0.75)).float().mean() > 0.6  # logit-normal concentrates mid-way


def test_batch_sampler_covers_each_epoch_and_resumes():
    sampler = BatchSampler(10, 4, torch.Generator().manual_seed(0))
    first = torch.cat([sampler.next_batch() for _ in range(5)])  # 20 = two epochs
    assert sorted(first[:10].tolist()) == list(range(10)) and sorted(first[10:].tolist()) == list(range(10))
    a = BatchSampler(10, 4, torch.Generator().manual_seed(0))
    a.next_batch()
    saved = {k: v.clone() for k, v in a.state().items()}
    expected = [a.next_batch() for _ in range(4)]
    b = BatchSampler(10, 4, torch.Generator().manual_seed(99))
    b.load(saved)
    assert all(torch.equal(x, b.next_batch()) for x in expected)


def test_checkpoint_store(tmp_path: Path):
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    opt.zero_grad()
    sum(p.sum() for g in opt.param_groups for p in g["params"]).backward()
    opt.step()
    tensors, meta = ckpt.optimizer_to_flat(opt.state_dict())
    back = ckpt.optimizer_from_flat(tensors, json.loads(json.dumps(meta)))
    opt.load_state_dict(back)
    for step in (3, 6, 9):
        ckpt.save_checkpoint(tmp_path, step, {"optimizer": tensors}, {"optimizer": meta})
    (tmp_path / "step-0000012").mkdir()  # an interrupted write: no manifest, must be ignored
    ckpt.prune_checkpoints(tmp_path)
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path)] == [6, 9]
    names = {p.name for p in (tmp_path / "step-0000009").iterdir()}
    assert names == {"optimizer.safetensors", "manifest.json", "SHA256SUMS"}  # no pickle


def test_train_data_is_validated(data: TrainData):
    with pytest.raises(ValueError, match=r"TrainData.latents: expected float32"):
        TrainData(data.clip_ids, data.latents.double(), data.tokens, data.mask)
    with pytest.raises(ValueError, match=r"TrainData.mask"):
        TrainData(data.clip_ids, data.latents, data.tokens, data.mask[:, :3])
    with pytest.raises(ValueError, match=r"TrainData.tokens"):
        TrainData(data.clip_ids[:3], data.latents[:3], data.tokens, data.mask)


# ---- training runs -------------------------------------------------------------------------------------------


def test_overfits_a_tiny_set_and_writes_a_loadable_model(data: TrainData, tmp_path: Path):
    few = TrainData(data.clip_ids[:4], data.latents[:4], data.tokens[:4], data.mask[:4])
    cfg = replace(TINY, steps=40, batch_size=4, lr=5e-3, caption_dropout=0.0, timestep_sampling="uniform")
    result = train(few, cfg, tmp_path, seed=0, name="overfit", callbacks=[], spec_hash="s1")
    losses = result.log[TrainingLog.loss]
    print(f"overfit loss: first 10 {losses[:10].mean():.3f} -> last 10 {losses[-10:].mean():.3f}")
    assert losses[-10:].mean() < 0.85 * losses[:10].mean()  # seen: 1.40 -> 1.06
    assert list(result.log[TrainingLog.step]) == list(range(1, 41))
    info = json.loads((tmp_path / "model" / TRAINING_INFO).read_text())
    assert info["objective"] == "flow" and info["timestep_sampling"] == "uniform" and info["steps"] == 40
    assert info["num_clips"] == 4 and info["spec_hash"] == "s1" and info["seed"] == 0
    assert info["weights_sha256"] == weights_sha256(tmp_path / "model")
    assert load_expert(tmp_path / "model").config.num_layers == cfg.num_layers


class _Crash(TrainCallback):
    def on_step(self, row: dict[str, float]) -> None:
        if row["step"] == 8:
            raise KeyboardInterrupt("simulated preemption")


def test_resume_gives_bit_identical_weights(data: TrainData, tmp_path: Path):
    straight = train(data, TINY, tmp_path / "a", seed=0, name="e0", callbacks=[])
    assert straight.resumed_from == 0
    partial = train(data, TINY, tmp_path / "b", seed=0, name="e0", callbacks=[], max_steps=6)
    assert partial.model_dir is None and partial.steps == 6 and not (tmp_path / "b" / "model").exists()
    resumed = train(data, TINY, tmp_path / "b", seed=0, name="e0", callbacks=[])
    assert resumed.resumed_from == 6
    _assert_same_weights(straight.model_dir, resumed.model_dir)
    assert straight.log[TrainingLog.loss].tolist() == resumed.log[TrainingLog.loss].tolist()
    # a crash between checkpoints (step 8; last checkpoint at 6) loses only the unsaved steps
    with pytest.raises(KeyboardInterrupt):
        train(data, replace(TINY, checkpoint_every=6), tmp_path / "c", seed=0, name="e0", callbacks=[_Crash()])
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path / "c" / "checkpoints")] == [6]
    after_crash = train(data, TINY, tmp_path / "c", seed=0, name="e0", callbacks=[])
    assert after_crash.resumed_from == 6
    _assert_same_weights(straight.model_dir, after_crash.model_dir)
    # checkpoints of another run (different seed) are not resumed from
    other = train(data, TINY, tmp_path / "b", seed=1, name="e0", callbacks=[], max_steps=3)
    assert other.resumed_from == 0


def test_two_trainers_on_one_folder_take_turns_and_the_second_reuses_the_model(data: TrainData, tmp_path: Path):
    started = threading.Event()

    class Slow(TrainCallback):
        def on_step(self, row):
            started.set()
            time.sleep(0.05)  # hold the folder long enough for the second to arrive

    cfg = replace(TINY, steps=6)
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", train(
        data, cfg, tmp_path, seed=0, name="e0", callbacks=[Slow()], spec_hash="same")))  # fmt: skip
    first.start()
    assert started.wait(60)
    results["second"] = train(data, cfg, tmp_path, seed=0, name="e0", callbacks=[], spec_hash="same")
    first.join()
    assert not results["first"].skipped and results["second"].skipped, "the second waited, then reused the model"
    _assert_same_weights(results["first"].model_dir, results["second"].model_dir)


def test_a_full_disk_under_a_checkpoint_names_the_path_and_keeps_the_previous_one(
    data: TrainData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    straight = train(data, TINY, tmp_path / "a", seed=0, name="e0", callbacks=[])
    real, calls = ckpt.save_file, []

    def fills_the_disk(tensors, path, *args, **kwargs):  # the second checkpoint's second file: half of it written
        calls.append(path)
        if len(calls) == 6:
            Path(path).write_bytes(b"\0" * 16)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", fills_the_disk)
    root = tmp_path / "b" / "checkpoints"
    with pytest.raises(ckpt.CheckpointWriteError, match=rf"{root}/step-0000006: .*No space left on device.*kept"):
        train(data, TINY, tmp_path / "b", seed=0, name="e0", callbacks=[])
    assert [p.name for p in root.iterdir()] == ["step-0000003"], "no torn or temporary folder left"
    assert ckpt.load_checkpoint(root / "step-0000003")[1]["step"] == 3
    monkeypatch.setattr(ckpt, "save_file", real)
    resumed = train(data, TINY, tmp_path / "b", seed=0, name="e0", callbacks=[])  # space freed: resume
    assert resumed.resumed_from == 3
    _assert_same_weights(straight.model_dir, resumed.model_dir)


def test_a_flipped_bit_in_a_checkpoint_stops_the_resume_naming_the_file(data: TrainData, tmp_path: Path):
    train(data, TINY, tmp_path, seed=0, name="e0", callbacks=[], max_steps=6)
    moments = tmp_path / "checkpoints" / "step-0000006" / "optimizer.safetensors"
    raw = bytearray(moments.read_bytes())
    raw[-2] ^= 1 << 6  # an exponent bit of the last Adam moment: it would resume from a wrong number
    moments.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match=rf"{moments}: sha256 mismatch"):
        train(data, TINY, tmp_path, seed=0, name="e0", callbacks=[])


def test_non_finite_loss_fails_fast_naming_step_and_clips(data: TrainData, tmp_path: Path):
    poisoned = data.latents.clone()
    poisoned[5] = float("nan")
    bad = TrainData(data.clip_ids, poisoned, data.tokens, data.mask)
    with pytest.raises(NonFiniteLossError, match=r"at step (\d+)") as err:
        train(bad, replace(TINY, checkpoint_every=1), tmp_path, seed=0, name="nan", callbacks=[])
    message = str(err.value)
    failed_step = int(message.split("at step ")[1].split(";")[0])
    assert f"clips with a non-finite loss: ['{data.clip_ids[5]}']" in message and "lower expert.lr" in message
    assert isinstance(err.value, ValueError)
    assert not (tmp_path / "model").exists()
    saved = [s for s, _ in ckpt.complete_checkpoints(tmp_path / "checkpoints")]
    assert all(s < failed_step for s in saved)


def test_micro_batch_does_not_change_the_math(data: TrainData, tmp_path: Path):
    cfg = replace(TINY, steps=2, batch_size=16, checkpoint_every=100)
    whole = train(data, replace(cfg, micro_batch=16), tmp_path / "m16", seed=0, name="mb", callbacks=[])
    split = train(data, replace(cfg, micro_batch=4), tmp_path / "m4", seed=0, name="mb", callbacks=[])
    for col in (TrainingLog.loss, TrainingLog.grad_norm):
        torch.testing.assert_close(torch.tensor(split.log[col].values), torch.tensor(whole.log[col].values))
    wa, wb = _weights(whole.model_dir), _weights(split.model_dir)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5)


def test_unchanged_spec_is_not_retrained(data: TrainData, tmp_path: Path):
    cfg = replace(TINY, steps=3)
    first = train(data, cfg, tmp_path, seed=0, name="s", callbacks=[], spec_hash="abc")
    listing = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    stamp = (first.model_dir / TRAINING_INFO).stat().st_mtime_ns
    again = train(data, cfg, tmp_path, seed=0, name="s", callbacks=[], spec_hash="abc")
    assert again.skipped and again.steps == 3 and again.log.equals(first.log)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == listing
    assert (first.model_dir / TRAINING_INFO).stat().st_mtime_ns == stamp
    changed = train(data, replace(cfg, lr=1e-3), tmp_path, seed=0, name="s", callbacks=[], spec_hash="abd")
    assert not changed.skipped and changed.resumed_from == 0
    assert json.loads((tmp_path / "model" / TRAINING_INFO).read_text())["spec_hash"] == "abd"


def test_init_from_starts_model_and_ema_from_saved_weights_and_resume_keeps_it(data: TrainData, tmp_path: Path):
    parent = train(data, replace(TINY, steps=2), tmp_path / "parent", seed=0, name="p", callbacks=[]).model_dir
    # one step at a negligible lr: the saved EMA (0.1 x its start + 0.9 x the model) is the start weights, so the
    # model and its EMA both began there, not at a fresh init
    still = replace(TINY, steps=1, lr=1e-9, warmup_steps=0)
    cont = train(data, still, tmp_path / "cont", seed=0, name="c", callbacks=[], init_from=parent)
    fresh = train(data, still, tmp_path / "fresh", seed=0, name="c", callbacks=[])
    start, ours, new = _weights(parent), _weights(cont.model_dir), _weights(fresh.model_dir)
    for name in start:
        torch.testing.assert_close(ours[name], start[name], rtol=0, atol=1e-6)
    assert any(not torch.allclose(new[n], start[n], atol=1e-3) for n in start)
    assert cont.info["init_weights_sha256"] == weights_sha256(parent) and "init_weights_sha256" not in fresh.info
    # a half-trained continued run resumes from its checkpoint (same weights as straight through); checkpoints of a
    # run from a fresh init are not resumed by one that starts from saved weights
    cfg = replace(TINY, steps=4, checkpoint_every=2)
    straight = train(data, cfg, tmp_path / "a", seed=0, name="c", callbacks=[], init_from=parent)
    train(data, cfg, tmp_path / "b", seed=0, name="c", callbacks=[], max_steps=2)
    half = train(data, cfg, tmp_path / "b", seed=0, name="c", callbacks=[], init_from=parent, max_steps=2)
    assert half.resumed_from == 0
    resumed = train(data, cfg, tmp_path / "b", seed=0, name="c", callbacks=[], init_from=parent)
    assert resumed.resumed_from == 2
    _assert_same_weights(straight.model_dir, resumed.model_dir)
    # another architecture is refused, naming the folder and what differs
    with pytest.raises(ExpertLoadError, match=rf"{re.escape(str(parent))}: cannot start from these weights.*num_lay"):
        train(data, replace(still, num_layers=1), tmp_path / "bad", seed=0, name="c", callbacks=[], init_from=parent)


def test_eps_objective_trains(data: TrainData, tmp_path: Path):
    cfg = replace(TINY, objective="eps", steps=30, lr=3e-3, timestep_sampling="uniform", checkpoint_every=100)
    result = train(data, cfg, tmp_path, seed=0, name="eps", callbacks=[])
    losses = result.log[TrainingLog.loss]
    assert losses[-5:].mean() < 0.8 * losses[:5].mean()
    assert json.loads((tmp_path / "model" / TRAINING_INFO).read_text())["objective"] == "eps"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_picks_a_micro_batch_and_trains_in_bf16(data: TrainData, tmp_path: Path):
    result = train(data, replace(TINY, steps=4), tmp_path, seed=0, name="gpu", callbacks=[])
    assert result.model_dir is not None and result.log[TrainingLog.loss].notna().all()


def test_heldout_loss_of_a_zero_predictor_is_the_target_energy():
    """A model that outputs 0 scores mean((eps - x0)^2) = 1 + mean(x0^2) at every t, whatever the grid."""
    from lib.models.factory import build_expert
    from lib.train.heldout import heldout_loss

    data = tiny_train_data(16)
    model = build_expert(TINY, data.in_channels, data.text_dim, data.sample_shape, seed=0)
    torch.nn.init.zeros_(model.proj_out.weight)
    torch.nn.init.zeros_(model.proj_out.bias)
    loss = heldout_loss(model, data.latents, data.tokens, data.mask, "flow", seed=0)
    expected = 1.0 + float((data.latents**2).mean())
    assert loss == pytest.approx(expected, rel=0.03)
    again = heldout_loss(model, data.latents, data.tokens, data.mask, "flow", seed=0)
    assert again == loss  # same seed, same noise: comparable across models


def test_the_training_bar_shows_step_loss_lr_and_seconds_per_step_and_resumes_at_the_checkpoint(
    data: TrainData, tmp_path: Path, monkeypatch
):
    from lib.progress import ENV
    from lib.train.trainer import ProgressCallback

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv(ENV, "1")
    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    first = ProgressCallback(4, "expert-07")
    train(data, TINY, tmp_path, seed=0, name="expert-07", callbacks=[first], max_steps=6)
    assert "expert-07" in err.getvalue() and "step/s" in err.getvalue()
    assert (first.bar.n, first.bar.total) == (6, 6)  # a run stopped early counts to where it stops
    assert re.fullmatch(r"loss \d\.\d{4} lr \d\.\d\de-\d\d \d+\.\d\d s/step", first.bar.postfix), first.bar.postfix
    resumed = ProgressCallback(4, "expert-07")
    train(data, TINY, tmp_path, seed=0, name="expert-07", callbacks=[resumed])
    assert (resumed.bar.initial, resumed.bar.n, resumed.bar.total) == (6, TINY.steps, TINY.steps)
    assert "6/12" in err.getvalue()  # the resumed bar starts at the checkpoint's step
