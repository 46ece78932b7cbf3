"""Progress bars appear only where a person watches, and carry what a watcher needs (lib.progress)."""

import io

import pytest

from lib.progress import ENV, bars_enabled, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("env", "tty", "ci", "expected"),
    [
        (None, True, None, True),  # a terminal: bars
        (None, False, None, False),  # a Flyte pod, a pipe, pytest's capture: log lines only
        (None, True, "true", False),  # CI
        ("1", False, "true", True),  # forced on
        ("0", True, None, False),  # forced off
    ],
)
def test_bars_follow_terminal_ci_and_the_override(monkeypatch, env, tty, ci, expected):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    if env is not None:
        monkeypatch.setenv(ENV, env)
    if ci is not None:
        monkeypatch.setenv("CI", ci)
    monkeypatch.setattr("sys.stderr", _Terminal() if tty else io.StringIO())
    assert bars_enabled() is expected


def test_a_bar_draws_on_stderr_when_on_and_passes_items_through_when_off(monkeypatch):
    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setenv(ENV, "1")
    bar = progress(range(5), desc="encode", unit="clip", initial=0)
    assert list(bar) == list(range(5)) and bar.n == 5
    assert "encode" in err.getvalue() and "clip/s" in err.getvalue()
    assert err.getvalue().endswith("\r")  # erased when done: the stage's summary line is the record
    quiet = io.StringIO()
    monkeypatch.setattr("sys.stderr", quiet)
    monkeypatch.setenv(ENV, "0")
    assert list(progress(range(5), desc="encode", unit="clip")) == list(range(5))
    assert quiet.getvalue() == ""
