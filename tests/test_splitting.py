"""The split is deterministic, stratified 70/15/15 and never lets a duplicate group straddle splits."""

from __future__ import annotations

import hashlib
import random

from components.splitting import HOLDOUT, SPLITS, Item, plan_split, split_counts, split_names

RATIOS = {"train": 0.7, "eval": 0.15, "test": 0.15}


def items_for(counts: dict[str, int], site: str = "lab", root: str = "root") -> list[Item]:
    return [
        Item(f"{root}/{label}/{i}.jpg", label, hashlib.sha256(f"{root}{label}{i}".encode()).hexdigest(), site)
        for label, n in counts.items()
        for i in range(n)
    ]


def test_five_thousand_images_split_3500_750_750_stratified():
    plan = plan_split(items_for({c: 1000 for c in "abcde"}), RATIOS, seed=42)
    totals = {s: list(plan.split_of.values()).count(s) for s in SPLITS}
    assert totals == {"train": 3500, "eval": 750, "test": 750}
    for label in "abcde":
        per = [s for p, s in plan.split_of.items() if p.startswith(f"root/{label}/")]
        assert (per.count("train"), per.count("eval"), per.count("test")) == (700, 150, 150)


def test_split_is_deterministic_and_independent_of_input_order():
    items = items_for({"a": 97, "b": 41})
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    assert plan_split(items, RATIOS, 1).split_of == plan_split(shuffled, RATIOS, 1).split_of
    assert plan_split(items, RATIOS, 1).split_of != plan_split(items, RATIOS, 2).split_of


def test_duplicates_are_removed_and_never_straddle_splits():
    items = items_for({"a": 50})
    copies = [Item(f"second/a/copy{i}.jpg", "a", items[i].sha256, "lab") for i in range(6)]  # in another root
    plan = plan_split(items + copies, RATIOS, 42)
    assert len(plan.split_of) == 50
    assert plan.duplicates == {f"second/a/copy{i}.jpg": items[i].relpath for i in range(6)}
    assert not set(plan.duplicates) & set(plan.split_of)


def test_same_bytes_in_two_classes_is_a_conflict():
    items = items_for({"a": 10, "b": 10})
    clash = Item("root/b/clash.jpg", "b", items[0].sha256, "lab")
    plan = plan_split(items + [clash], RATIOS, 42)
    assert set(plan.conflicts) == {"root/a/0.jpg", "root/b/clash.jpg"}
    assert "label conflict" in plan.conflicts["root/b/clash.jpg"]
    assert "root/a/0.jpg" not in plan.split_of and len(plan.split_of) == 19


def test_split_counts_round_and_keep_every_item():
    for n in range(0, 40):
        counts = split_counts(n, RATIOS)
        assert sum(counts.values()) == n and min(counts.values()) >= 0
    assert split_counts(995, RATIOS) == {"train": 696, "eval": 149, "test": 150}


def test_each_class_is_split_within_each_site():
    items = items_for({"a": 100}, site="lyon", root="one") + items_for({"a": 20}, site="oslo", root="two")
    plan = plan_split(items, RATIOS, 42)
    for root, n in (("one", 100), ("two", 20)):
        per = [s for p, s in plan.split_of.items() if p.startswith(f"{root}/")]
        assert {s: per.count(s) for s in SPLITS} == split_counts(n, RATIOS)


def test_a_held_out_root_or_site_goes_whole_to_the_holdout_split():
    items = items_for({"a": 30, "b": 30}, site="lyon", root="one") + items_for({"a": 12}, site="oslo", root="two")
    for hold_out in ("two", "oslo"):
        plan = plan_split(items, RATIOS, 42, hold_out)
        held = {p for p, s in plan.split_of.items() if s == HOLDOUT}
        assert held == {i.relpath for i in items if i.site == "oslo"}
        assert {s for p, s in plan.split_of.items() if p not in held} == set(SPLITS)
    assert split_names("") == list(SPLITS) and split_names("oslo") == [*SPLITS, HOLDOUT]
