"""The model card is written from the run's figures."""

from __future__ import annotations

from components.model_card import render_model_card
from tests.helpers.summaries import hold_out, summary


def test_model_card_carries_the_runs_figures():
    card = render_model_card(summary(blessed=True), "bloodcell", "2026-11-26T10:00:00")
    assert card.startswith("# Model card: bloodcell (serving version 1795700000)")
    assert "Pipeline run `2026-11-26T10:00:00`" in card
    for section in ("## Intended use", "## Data", "**Sites.**", "## Metrics (test split)", "## Shortcut audit",
                    "## Operating point", "## Release gate", "## Limitations"):  # fmt: skip
        assert section in card
    assert "Accuracy 94.00%; myeloblast recall 100.00%." in card
    assert "| erythroblast | 1.0000 | 0.9000 | 0.9000 | 10 |" in card
    assert "scores 71.23% on this test split" in card
    assert "| 400x400 neutral | 20 | 90.00% | myeloblast 100.00%, seg_neutrophil 80.00% |" in card
    assert "| grayscale | 88.11% | 5.89 | 95.00% | 97.50% | NO |" in card
    assert "| stain_normalised | 93.22% | 0.78 | 100.00% | n/a | yes |" in card  # an audit from before the figure
    assert "at least 0.0412" in card and "100.00% recall at 83.33% precision" in card
    assert "T = 1.732" in card and "0.0543 before, 0.0121 after" in card
    assert "Fails the stress bar on: grayscale." in card
    assert "Blessed and pushed." in card
    assert "score the served model on labelled cells of that scanner: `bloodcell score`" in card
    assert "seg_neutrophil: barcelona 1149, mll-marrow 63, munich 716" in card
    assert "| barcelona | 35 | 94.29% | n/a |" in card and "| munich | 15 | 93.33% | 100.00% |" in card
    assert "seg_neutrophil 80.00% (5)" in card
    assert "- basophil is trained from site `barcelona` alone (other sites: mll-marrow none, munich 6)" in card
    assert "it lacks erythroblast images from them" in card
    assert "monocyte is trained from" not in card and "seg_neutrophil is trained from" not in card


def test_model_card_of_a_hold_out_run_gives_the_unseen_sites_figures():
    card = render_model_card(summary(blessed=False, hold_out=hold_out()), "bloodcell", "")
    assert "## Held out: `munich-extra` (never trained on)" in card
    assert "37 images, accuracy 81.08%" in card and "monocyte 72.73%" in card
    assert "Other cells called myeloblast: basophil 0 of 10, erythroblast 0 of 10, monocyte 3 of 11." in card


def test_model_card_of_a_blocked_model_says_why():
    card = render_model_card(summary(blessed=False), "bloodcell", "")
    assert "(serving version not pushed)" in card and "Pipeline run `unknown`" in card
    assert "Not blessed: accuracy = 0.9400, required >= 0.95" in card


def test_model_card_says_how_cells_out_of_scope_are_answered():
    card = render_model_card(summary(blessed=True), "bloodcell", "")
    assert "## Cells that are none of the classes" in card and "probability is over 0.6213" in card
    assert "| lymphocyte @ mll-marrow | 10 | 60.00% | 70.00% | 20.00% |" in card
    assert "called out of scope: barcelona 2.86%, munich 0.00%." in card
    untrained = render_model_card(summary(blessed=True, out_of_scope=None), "bloodcell", "")
    assert "Not trained: every cell is called one of the classes." in untrained
