"""The README's example prompt is the one ``benchmarks/example_prompt.py`` found the tiny run's DDM draws best, and
it draws it well enough to show a reader (its recorded AttrNet score), in every place the README uses it."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_example_prompt_is_the_measured_best_and_scores_well():
    record = json.loads((ROOT / "benchmarks" / "results" / "tiny" / "example_prompt.json").read_text())
    readme = (ROOT / "README.md").read_text()
    shown = set(re.findall(r'--prompt "([^"]+)"', readme)) | set(re.findall(r'pipe\(\["([^"]+)"\]', readme))
    assert shown == {record["chosen"]}, "the README's example prompts differ from the measured best"
    assert record["chosen_scores"]["mean4"] >= 0.5 and record["chosen_scores"]["object_found"] >= 0.75
    assert record["chosen_scores"]["mean4"] > record["all_candidates_mean4"]
    assert f'{record["chosen_scores"]["mean4"]:.2f}' in readme  # the README quotes the score it was chosen by
