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
    RunConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    replace_in,
    with_overrides,
)

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
