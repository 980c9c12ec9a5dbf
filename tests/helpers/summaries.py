"""A run summary of known figures (the RunReport's shape), for the report, card and summary tests."""

from __future__ import annotations

from components.evaluation import matrix_figures
from contracts.run_summary import RunSummary
from tests.helpers import CLASSES

MATRIX = [[10, 0, 0, 0, 0], [0, 9, 1, 0, 0], [0, 0, 10, 0, 0], [0, 0, 0, 10, 0], [0, 0, 0, 2, 8]]
# The same test split by site: barcelona has no myeloblasts, munich has all of them.
SITE_MATRICES = {
    "barcelona": [[10, 0, 0, 0, 0], [0, 9, 1, 0, 0], [0, 0, 10, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1, 4]],
    "munich": [[0] * 5, [0] * 5, [0] * 5, [0, 0, 0, 10, 0], [0, 0, 0, 1, 4]],
}
HELD_OUT = [[6, 0, 4, 0, 0], [0, 10, 0, 0, 0], [0, 0, 8, 3, 0], [0, 0, 0, 6, 0], [0] * 5]


# The out-of-scope test split's answers (gate.json's `out_of_scope`): lymphocytes at two sites, platelets.
OUT_OF_SCOPE = {
    "sites": {
        "barcelona": {"images": 20, "out_of_scope": 0.95, "caught": 1.0, "alerts": 0.0},
        "mll-marrow": {"images": 10, "out_of_scope": 0.6, "caught": 0.7, "alerts": 0.2},
    },
    "cell_types": {
        "lymphocyte @ barcelona": {"images": 12, "out_of_scope": 0.9167, "caught": 1.0, "alerts": 0.0},
        "lymphocyte @ mll-marrow": {"images": 10, "out_of_scope": 0.6, "caught": 0.7, "alerts": 0.2},
        "platelet @ barcelona": {"images": 8, "out_of_scope": 1.0, "caught": 1.0, "alerts": 0.0},
    },
    "in_scope_called_out": {"barcelona": 0.0286, "munich": 0.0},
}


def hold_out() -> dict:
    pooled = matrix_figures(HELD_OUT, CLASSES, "myeloblast")
    return {
        "name": "munich-extra", "trained_classes": CLASSES, "untrained_classes": [], "recall": pooled["recall"],
        "called_critical": {"basophil": 0, "erythroblast": 0, "monocyte": 3}, "pooled": pooled,
        "sites": {"munich": pooled},
    }  # fmt: skip


def summary(blessed: bool, **changes) -> RunSummary:
    """Figures of a small run, blessed and pushed or not, with `changes` to any field."""
    return RunSummary.from_dict({
        "splits": {"train": 35, "eval": 10, "test": 50},
        "ingestion": {"found": 96, "ingested": 95, "duplicates": 1, "rejected": 0},
        "epochs_trained": 4,
        "test_accuracy": 0.94,
        "critical_class": "myeloblast",
        "critical_recall": 1.0,
        "per_class": {
            name: {"precision": 1.0, "recall": row[k] / 10, "f1": 0.9, "support": sum(row)}
            for k, (name, row) in enumerate(zip(CLASSES, MATRIX, strict=False))
        },
        "confusion_matrix": MATRIX,
        "sites": {site: matrix_figures(m, CLASSES, "myeloblast") for site, m in SITE_MATRICES.items()},
        "hold_out": None,
        "blessed": blessed,
        "gate_failures": [] if blessed else ["accuracy = 0.9400, required >= 0.95"],
        "identical_to_served": False,
        "served_model": None,
        "pushed": blessed,
        "pushed_destination": "/srv/bloodcell/1795700000" if blessed else "",
        "pushed_version": "1795700000" if blessed else "",
        "operating_point": {
            "temperature": 1.7321, "threshold": 0.0412, "review_confidence": 0.9, "recall": 1.0,
            "precision": 0.8333, "ece_before": 0.0543, "ece_after": 0.0121, "out_of_scope_threshold": 0.6213,
        },
        "out_of_scope": OUT_OF_SCOPE,
        "audit": {
            "clean": {"count": 50, "accuracy": 0.94},
            "colour_baseline": {"count": 50, "accuracy": 0.7123},
            "morphology_gain": 0.2277,
            "groups": {
                "360x363 warm": {"count": 30, "accuracy": 0.9667, "recall": {"basophil": 1.0, "monocyte": 0.9}},
                "400x400 neutral": {"count": 20, "accuracy": 0.9, "recall": {"myeloblast": 1.0, "seg_neutrophil": 0.8}},
            },
            "train_sites_per_class": {
                "basophil": {"barcelona": 870, "mll-marrow": 0, "munich": 6},
                "erythroblast": {"barcelona": 1074, "mll-marrow": 0, "munich": 8},
                "monocyte": {"barcelona": 1009, "mll-marrow": 214, "munich": 6},
                "myeloblast": {"barcelona": 0, "mll-marrow": 429, "munich": 702},
                "seg_neutrophil": {"barcelona": 1149, "mll-marrow": 63, "munich": 716},
            },
            "single_site_classes": {"basophil": "barcelona", "erythroblast": "barcelona"},
            "stress": {
                "grayscale": {
                    "accuracy": 0.8811, "drop": 0.0589, "critical_recall": 0.95, "critical_alert_recall": 0.975, "passes": False,
                },
                # written before the alert was measured: no critical_alert_recall
                "stain_normalised": {"accuracy": 0.9322, "drop": 0.0078, "critical_recall": 1.0, "passes": True},
                "geometry_swapped": {"accuracy": 0.9254, "drop": 0.0146, "critical_recall": 1.0, "passes": True},
            },
            "bars": {"max_stress_drop": 0.03, "min_stress_critical_recall": 0.97},
            "passes": False,
        },
    } | changes)  # fmt: skip
