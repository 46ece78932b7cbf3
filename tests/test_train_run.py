"""One model's run (lib.train.run) apart from the trainer: its start check, its identity and its MLflow run's record.
Training itself runs through it in tests/e2e/test_train_workflow.py and tests/test_extend.py."""

import json
from dataclasses import replace

import pytest

from lib.config import ExpertConfig, input_key
from lib.encode.store import CODEC_FILE
from lib.models.factory import weights_digest, weights_sha256
from lib.train.run import checked_start, model_run, run_key
from lib.train.specs import MONOLITH, SEED, ExpertSpec

SPEC = ExpertSpec("expert-00", 0, 3, 10, "abc", ExpertConfig(patch_size=[1, 2, 2], batch_size=4))


def test_a_start_folder_must_hold_the_weights_its_spec_names(tmp_path):
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    spec = replace(SPEC, init_sha256=weights_digest(weights_sha256(tmp_path)))
    assert checked_start(spec, tmp_path) == tmp_path and checked_start(SPEC, None) is None
    with pytest.raises(ValueError, match=r"expert-00: start weights .* have digest \w+, the spec names none"):
        checked_start(SPEC, tmp_path)  # a spec without start weights refuses any


def test_the_run_key_names_the_spec_and_the_encoded_folders_it_reads():
    assert run_key(SPEC, ["/a/encode"]) == input_key(SPEC.spec_hash(), "/a/encode")
    assert run_key(SPEC, ["/b/encode"]) != run_key(SPEC, ["/a/encode"]) != run_key(SPEC, ["/a/encode", "/b/encode"])


@pytest.mark.parametrize(
    "changes, kind",
    [
        ({}, "expert"),
        ({"cluster_id": MONOLITH, "name": "monolith"}, "monolith"),
        ({"cluster_id": SEED, "name": "seed"}, "seed"),
        ({"init_sha256": "ff"}, "continued expert"),
        ({"init_sha256": "ff", "expert": replace(SPEC.expert, seed_fraction=0.5)}, "branched expert"),
    ],
)
def test_a_model_run_records_the_spec_its_kind_and_the_tokens_of_one_step(tmp_path, changes, kind):
    (tmp_path / CODEC_FILE).write_text(json.dumps({"latent_shape": [3, 4, 8, 8]}))
    spec = replace(SPEC, **changes)
    run = model_run(spec, "hash", tmp_path, lambda: None)
    assert run.tags == {"ddm.kind": kind} and run.model == spec.name and run.params["spec_hash"] == "hash"
    assert ("init_sha256" in run.params) == bool(spec.init_sha256)
    assert run.tokens_per_step == 4 * (4 // 1) * (8 // 2) * (8 // 2)  # batch x latent tokens of patch 1x2x2
    run.on_start(0, 10)  # no tracker (tracking off): the run records nothing and costs nothing
    run.on_step({"step": 1, "loss": 0.5, "lr": 1e-3, "grad_norm": 1.0, "seconds": 0.1})
    assert run.tracker is None and run.pending == []
