import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lib.config import (
    ConfigError,
    DataConfig,
    ExpertConfig,
    RunConfig,
    added_later,
    config_from_dict,
    config_to_dict,
    input_key,
    key_values,
    load_config,
    replace_in,
    with_overrides,
)
from lib.experiment.context import _ingested, _key
from lib.train.specs import ExpertSpec

CONFIGS = sorted(Path("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)


def test_tiny_is_the_cpu_default():
    cfg = load_config("configs/tiny.yaml")
    assert cfg.data.source == "builtin" and cfg.resources.expert_gpu == 0


def test_unknown_key_is_named_with_its_section(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("expert:\n  stepz: 3\n")
    hint = r"expert.stepz \(did you mean expert.steps\?\)"
    with pytest.raises(ConfigError, match=rf"c.yaml: unknown key\(s\) {hint}; known: .*steps"):
        load_config(f)


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown key.*routr"):
        config_from_dict({"routr": {}})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"expert": {"steps": 0}}, "expert.steps: must be > 0, got 0"),
        ({"expert": {"steps": "ten"}}, "expert.steps: expected int, got str"),
        ({"expert": {"lr": True}}, "expert.lr: expected float"),
        ({"cluster": {"method": "spectral"}}, "cluster.method: 'spectral' is not one of"),
        ({"expert": {"compile": "maybe"}}, "expert.compile: 'maybe' is not one of auto, always, never"),
        ({"expert": {"compile": True}}, "expert.compile: expected str, got bool True"),  # YAML 1.1 `on`
        ({"expert": {"activation_checkpointing": "yes"}}, "expert.activation_checkpointing: expected bool"),
        (
            {"cluster": {"num_clusters": 50, "fine_clusters": 64}, "data": {"num_clips": 10}},
            "larger than data.num_clips",
        ),
        ({"cluster": {"num_clusters": 8, "fine_clusters": 4}}, "cluster.fine_clusters: must be >= num_clusters"),
        ({"data": {"source": "manifest"}}, "data.manifest: required when source=manifest"),
        ({"data": {"max_bad_fraction": 1.5}}, r"data.max_bad_fraction: must lie in \[0, 1\]"),
        ({"sample": {"strategy": "top3"}}, "sample.strategy"),
        ({"resources": {"min_success_ratio": 0}}, "resources.min_success_ratio"),
        ({"data": [1, 2]}, "data: expected a mapping"),
        ({"data": {"num_families": 9}}, r"data.num_families: must lie in \[4, 8\], got 9"),
        ({"data": {"num_families": 2}}, r"data.num_families: .*got 2 \(fewer families: data.scenes\)"),
        ({"data": {"family_overlap": 1.5}}, r"data.family_overlap: must lie in \[0, 1\], got 1.5"),
        ({"data": {"family_overlap": "half"}}, "data.family_overlap: expected float, got str"),
        ({"data": {"scenes": ["spots"]}}, "data.scenes: 'spots' is not one of plain, gradient, stripes, checker"),
        ({"data": {"num_families": 8}}, "data.scenes: still the 4 default families while data.num_families=8"),
        (
            {"data": {"num_families": 5, "scenes": []}, "extend": {"scenes": ["grid"]}},
            r"extend.scenes: \['grid'\] are not among the 5 of data.num_families",
        ),
        ({"extend": {"scenes": []}}, "extend.scenes: needs at least one family"),
        ({"data": {"family_overlp": 0.5}}, r"data.family_overlp \(did you mean data.family_overlap\?\)"),
    ],
)
def test_bad_values_name_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values)


def test_a_yaml_file_with_a_bad_compile_mode_names_file_field_and_the_allowed_values(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("expert:\n  compile: maybe\n  activation_checkpointing: true\n")
    allowed = "expert.compile: 'maybe' is not one of auto, always, never"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: {allowed}"):
        load_config(bad)
    bad.write_text("expert:\n  compile: on\n")
    with pytest.raises(ConfigError, match="expert.compile: expected str, got bool True"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text("expert:\n  compile: always\n  activation_checkpointing: true\n")
    cfg = load_config(good)
    assert cfg.expert.compile == "always" and cfg.expert.activation_checkpointing is True
    assert RunConfig().expert.compile == "auto" and RunConfig().expert.activation_checkpointing is False


def test_ints_widen_to_float_and_missing_keys_keep_defaults():
    cfg = config_from_dict({"expert": {"lr": 1}})
    assert cfg.expert.lr == 1.0 and isinstance(cfg.expert.lr, float)
    assert cfg.expert.steps == RunConfig().expert.steps


def test_round_trip_through_json_hook():
    cfg = replace_in(RunConfig(), expert={"steps": 7}, seed=3)
    assert RunConfig.from_json(json.dumps(config_to_dict(cfg))) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        RunConfig.from_json('{"data": {"num_clipz": 3}}')


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\ndata: [unclosed\n")
    where = re.escape(str(bad))
    with pytest.raises(ConfigError, match=rf"^{where}:3:1: not valid YAML: while parsing a flow sequence"):
        load_config(bad)


def test_floats_in_scientific_notation_and_did_you_mean(tmp_path):
    """PyYAML reads `1e-3` as a string (YAML 1.1); a float field takes it, a string field keeps it as written."""
    f = tmp_path / "c.yaml"
    f.write_text("expert:\n  lr: 1e-3\n  weight_decay: 2.5E-1\noutput_dir: 1e-3\n")
    cfg = load_config(f)
    assert cfg.expert.lr == 1e-3 and cfg.expert.weight_decay == 0.25 and cfg.output_dir == "1e-3"
    f.write_text("expert:\n  lr: fast\n")
    with pytest.raises(ConfigError, match="expert.lr: expected float, got str 'fast'"):
        load_config(f)
    f.write_text("expert:\n  stepz: 3\n  learning_rate: 1\nroutr: {}\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) routr \(did you mean router\?\)") as err:
        load_config(f)
    f.write_text("expert:\n  stepz: 3\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match=r"expert.learning_rate, expert.stepz \(did you mean expert.steps\?\)"):
        load_config(f)
    assert "did you mean" not in str(err.value).split("routr")[0]


def test_command_line_overrides_parse_yaml_values_and_name_bad_ones():
    cfg = with_overrides(RunConfig(), ["data.themed_scenes=true", "expert.num_layers=2", "expert.lr=1e-3"])
    assert cfg.data.themed_scenes is True and cfg.expert.num_layers == 2 and cfg.expert.lr == 1e-3
    with pytest.raises(ConfigError, match="expected section.field=value"):
        with_overrides(cfg, ["themed_scenes=true"])
    with pytest.raises(ConfigError, match="unknown section 'dta'"):
        with_overrides(cfg, ["dta.num_clips=5"])
    with pytest.raises(ConfigError, match="expert.num_layers: must be > 0"):
        with_overrides(cfg, ["expert.num_layers=0"])
    with pytest.raises(ConfigError, match="nope"):
        with_overrides(cfg, ["data.nope=1"])


def test_pyflyte_takes_the_yaml_path_and_its_errors_name_file_field_and_allowed_values(tmp_path, monkeypatch):
    """`pyflyte run workflows/pipeline.py pipeline --cfg configs/tiny.yaml` builds the same config as `make run`, and a
    mistake reads as it does through load_config."""
    from flytekit.interaction.click_types import JsonParamType

    from lib.config import RunConfig, load_config

    cli = JsonParamType(RunConfig)  # what pyflyte run uses for a dataclass input
    assert cli.convert("configs/tiny.yaml", None, None) == load_config("configs/tiny.yaml")
    bad = tmp_path / "bad.yaml"
    tiny = Path("configs/tiny.yaml").read_text()
    codec = load_config("configs/tiny.yaml").encode.codec
    bad.write_text(tiny.replace(f"codec: {codec}", "codec: pixels"))
    assert bad.read_text() != tiny
    monkeypatch.setattr("sys.argv", ["pyflyte", "run", "workflows/pipeline.py", "pipeline", "--cfg", str(bad)])
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: encode.codec: 'pixels' is not one of pixel, vae"):
        cli.convert(str(bad), None, None)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: encode.codec"):
        load_config(bad)


def _pyflyte(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLYTE_SDK_LOGGING_LEVEL": "40"}
    command = [str(Path(sys.executable).parent / "pyflyte"), "run", "workflows/pipeline.py", "pipeline", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_pyflyte_reports_a_bad_config_file_in_one_line_and_its_help_says_what_cfg_takes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("expert:\n  lr: [1e-3\n  steps: 3\n")
    run = _pyflyte("--cfg", str(bad))
    assert run.returncode != 0
    expected = "not valid YAML: while parsing a flow sequence expected ',' or ']', but got ':'"
    assert run.stderr.strip() == f"error: {bad}:3:8: {expected}"
    bad.write_text("expert:\n  stepz: 3\n")
    run = _pyflyte("--cfg", str(bad))
    assert run.returncode != 0 and len(run.stderr.strip().splitlines()) == 1
    assert "expert.stepz (did you mean expert.steps?)" in run.stderr
    help_text = " ".join(_pyflyte("--help").stdout.split())
    assert "a YAML run config file, e.g. configs/tiny.yaml" in help_text
    for section in [f.name for f in dataclasses.fields(RunConfig)]:
        assert section in help_text.split("Options")[0], section


def test_larger_worlds_and_the_overlap_are_one_override_each():
    cfg = with_overrides(RunConfig(), ["data.num_families=8", "data.scenes=[]", "data.family_overlap=0"])
    assert (cfg.data.num_families, cfg.data.scenes, cfg.data.family_overlap) == (8, [], 0.0)
    grown = with_overrides(cfg, ["extend.scenes=[grid]"])
    assert grown.extend.data_config(grown.data).scenes == ["grid"]


@dataclasses.dataclass(frozen=True)
class _Inner:
    a: int = 1
    b: str = added_later("x")


@dataclasses.dataclass(frozen=True)
class _Outer:
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    c: float = added_later(0.0)


def test_key_values_leave_out_later_fields_only_at_their_default():
    assert key_values(_Outer()) == {"inner": {"a": 1}}
    assert key_values(_Outer(_Inner(b="y"), c=0.5)) == dataclasses.asdict(_Outer(_Inner(b="y"), c=0.5))
    assert key_values(_Outer(_Inner(a=2))) == {"inner": {"a": 2}}
    data = key_values(replace_in(RunConfig(), data={"family_overlap": 0.5}).data)
    assert data["family_overlap"] == 0.5 and "num_families" not in data


def test_keys_at_the_defaults_are_the_keys_from_before_the_later_fields(tmp_path):
    """Computed on the code before data.num_families and data.family_overlap (commit bfa694c): the data folder and data
    key of lib.experiment.context, the pipeline's stage keys and an expert spec's hash, which name cached datasets and
    trained models."""
    for path, folder, data_key in [
        ("configs/tiny.yaml", "7cac1e06b3f0", "5b8ffc2c9241"),
        ("configs/bench.yaml", "7dbf200bbbaf", "65ec9379b9ef"),
    ]:
        cfg = load_config(path)
        assert _key(cfg.seed, key_values(cfg.data)) == folder
        assert _key(cfg.seed, key_values(cfg.data), dataclasses.asdict(cfg.encode)) == data_key
    assert _key(0, key_values(DataConfig()), dataclasses.asdict(RunConfig().encode)) == "08f11ec82da8"
    tiny = replace_in(RunConfig(), data={"num_clips": 12, "frames": 4, "height": 16, "width": 16})
    folder, _, _ = _ingested(tiny, tmp_path)  # the experiment driver's own data folder
    assert folder.name == "391864fa95fa"
    # the pipeline's stage folders (the ingest stage takes the data config, sampling the whole run config)
    assert input_key(DataConfig(), 0) == "e51973fdcf3a1992" and input_key(RunConfig(), 0) == "f44050a2b9c50407"
    assert ExpertSpec("expert-00", 0, 3, 10, "abc", ExpertConfig()).spec_hash() == "d7765cfb40d03c82"
    changed = ExpertConfig(budget_split="by_size", monolith_lr_scale=2.0, seed_fraction=0.25, micro_batch=4)
    assert ExpertSpec("expert-00", 0, 3, 10, "abc", changed, init_sha256="ff").spec_hash() == "bfbefd1a89a364ea"


def test_the_old_eval_section_still_loads_under_its_new_name_and_not_beside_it(tmp_path, caplog):
    old = tmp_path / "old.yaml"
    old.write_text("eval:\n  num_real: 24\n")
    with caplog.at_level("WARNING", logger="lib.config"):
        cfg = load_config(old)
    assert cfg.evaluate.num_real == 24 and "section 'eval' is now 'evaluate'" in caplog.text
    assert with_overrides(RunConfig(), ["eval.bootstrap=7"]).evaluate.bootstrap == 7, "protocols' --set eval.x"
    both = tmp_path / "both.yaml"
    both.write_text("eval:\n  num_real: 24\nevaluate:\n  num_real: 30\n")
    with pytest.raises(ConfigError, match="eval: renamed evaluate; give one of the two, not both"):
        load_config(both)
