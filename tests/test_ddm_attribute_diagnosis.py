"""The DDM attribute diagnosis tables: accuracies per method and cluster, and background accuracy beside how many
train clips of that background the prompt's cluster holds."""

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def diag(benchmark_script):
    return benchmark_script("ddm_attribute_diagnosis")


def _hits(background, color=(True, True, True, True)):
    n = len(background)
    return pd.DataFrame({"color": list(color), "shape": [False] * n, "background": background,
                         "motion": [True] * n, "object_found": list(color)})  # fmt: skip


def test_accuracy_table_per_method_and_cluster(diag):
    clusters = np.array([0, 0, 1, 1])
    hits = {"monolith": _hits([True, True, True, True]), "ddm:topk": _hits([True, False, False, False])}
    table = diag.accuracy_table(hits, clusters).set_index("method")
    assert table.loc["ddm:topk", "background"] == pytest.approx(0.25)
    assert table.loc["ddm:topk", "background c0"] == pytest.approx(0.5)
    assert table.loc["ddm:topk", "background c1"] == pytest.approx(0.0)
    assert table.loc["monolith", "mean4"] == pytest.approx(0.75)  # colour, background, motion right; shape wrong
    assert table.loc["ddm:topk", "mean4 c1"] == pytest.approx(0.5)


def test_background_table_counts_the_clusters_train_clips(diag):
    prompts = pd.DataFrame({"background": ["teal", "teal", "gray", "navy"], "cluster_id": [2, 2, 0, 0]})
    train = pd.DataFrame(
        {"background": ["teal"] * 3 + ["gray"] * 2 + ["navy"] * 4, "cluster_id": [2, 2, 1, 0, 0, 1, 1, 1, 2]}
    )
    hits = {"ddm:topk": _hits([True, False, True, False])}
    table = diag.background_table(hits, prompts, train).set_index(["background", "cluster"])
    assert table.loc[("teal", 2), "prompts"] == 2
    assert table.loc[("teal", 2), "ddm:topk"] == pytest.approx(0.5)
    assert table.loc[("teal", 2), "train clips in cluster"] == 2
    assert table.loc[("teal", 2), "share of the background's train clips"] == pytest.approx(2 / 3)
    assert table.loc[("navy", 0), "train clips in cluster"] == 0  # a background the expert never saw
    assert table.loc[("navy", 0), "share of the background's train clips"] == 0.0
