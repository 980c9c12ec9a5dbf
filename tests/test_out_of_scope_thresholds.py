"""benchmarks/out_of_scope_thresholds.py: the shares called out of scope at each threshold."""

from __future__ import annotations

import numpy as np

from benchmarks.out_of_scope_thresholds import shares, threshold_table
from contracts.signatures import OUT_OF_SCOPE_PROBABILITY


def rows(sites, probabilities, labels=None, cell_types=None):
    n = len(sites)
    return {
        "site": np.array(sites), OUT_OF_SCOPE_PROBABILITY: np.array(probabilities, float),
        "label": np.array(labels if labels is not None else [0] * n), "cell_type": np.array(cell_types or [""] * n),
    }  # fmt: skip


def test_each_threshold_gives_the_share_over_it_per_site_blasts_and_cell_type():
    evaluated = rows(["a"] * 4, [0.01, 0.1, 0.3, 0.6])
    test = rows(["a", "a", "b", "b"], [0.05, 0.4, 0.25, 0.01], labels=[3, 0, 3, 3])
    outside = rows(["a", "a", "b"], [0.9, 0.15, 0.35], cell_types=["lymphocyte", "lymphocyte", "ig"])
    assert shares(test, 0.2, {"a": test["site"] == "a"}) == {"a": 0.5}
    table = threshold_table(evaluated, test, outside, [0.5, 0.2], critical_index=3)
    header, rule, high, low = table.strip().split("\n")
    assert header == "| threshold | in-scope eval | in-scope test: a / b | test blasts: a / b | ig @ b | lymphocyte @ a |"
    assert rule == "|---|---|---|---|---|---|"
    assert high == "| 0.5 | 0.250 | 0.000 / 0.000 | 0.000 / 0.000 | 0.00 | 0.50 |"
    assert low == "| 0.2 | 0.500 | 0.500 / 0.500 | 0.000 / 0.500 | 1.00 | 0.50 |"
