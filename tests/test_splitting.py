"""The split is deterministic, stable when files are added, near 70/15/15, and never lets a duplicate or
near-duplicate group straddle splits."""

from __future__ import annotations

import hashlib
import random

import numpy as np

from components.splitting import NEAR_DUPLICATE_BITS, Item, near_duplicate_pairs, plan_split, split_names
from contracts.artifacts import HOLDOUT, SPLITS

RATIOS = {"train": 0.7, "eval": 0.15, "test": 0.15}


def random_phash(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def flip_bits(phash: str, bits: list[int]) -> str:
    value = int(phash, 16)
    for b in bits:
        value ^= 1 << b
    return f"{value:064x}"


def items_for(counts: dict[str, int], site: str = "lab", root: str = "root", seed: int = 0) -> list[Item]:
    rng = random.Random(f"{root}{site}{seed}")
    return [
        Item(f"{root}/{label}/{i}.jpg", label, hashlib.sha256(f"{root}{label}{i}{seed}".encode()).hexdigest(), site, phash)
        for label, n in counts.items()
        for i, phash in enumerate(random_phash(rng) for _ in range(n))
    ]


def shares(plan, prefix: str) -> dict[str, int]:
    per = [s for p, s in plan.split_of.items() if p.startswith(prefix)]
    return {s: per.count(s) for s in SPLITS}


def test_five_thousand_images_split_near_the_ratios_in_every_class():
    plan = plan_split(items_for({c: 1000 for c in "abcde"}), RATIOS, seed=42)
    assert len(plan.split_of) == 5000
    for label in "abcde":
        counts = shares(plan, f"root/{label}/")
        for split, ratio in RATIOS.items():  # binomial: within 4 standard deviations
            assert abs(counts[split] - 1000 * ratio) <= 4 * (1000 * ratio * (1 - ratio)) ** 0.5, (label, counts)


def test_split_is_deterministic_and_independent_of_input_order():
    items = items_for({"a": 97, "b": 41})
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    assert plan_split(items, RATIOS, 1).split_of == plan_split(shuffled, RATIOS, 1).split_of
    assert plan_split(items, RATIOS, 1).split_of != plan_split(items, RATIOS, 2).split_of


def test_adding_ten_percent_new_images_moves_no_existing_image():
    existing = items_for({c: 200 for c in "abc"}, site="lyon") + items_for({"a": 50}, site="oslo", root="two")
    added = items_for({c: 20 for c in "abc"}, site="lyon", root="new", seed=1) + items_for({"a": 5}, site="oslo", root="new2")
    before = plan_split(existing, RATIOS, 42).split_of
    after = plan_split(existing + added, RATIOS, 42).split_of
    assert len(added) >= 0.1 * len(existing)
    assert {p: after[p] for p in before} == before
    assert set(after) - set(before) == {i.relpath for i in added}


def test_exact_duplicates_are_removed_and_never_straddle_splits():
    items = items_for({"a": 50})
    copies = [Item(f"second/a/copy{i}.jpg", "a", items[i].sha256, "lab", items[i].phash) for i in range(6)]
    plan = plan_split(items + copies, RATIOS, 42)
    assert len(plan.split_of) == 50
    assert plan.duplicates == {f"second/a/copy{i}.jpg": items[i].relpath for i in range(6)}
    assert not set(plan.duplicates) & set(plan.split_of)


def test_near_duplicates_are_kept_in_one_split():
    items = items_for({"a": 60})
    rng = random.Random(5)
    copies = [
        Item(f"root/a/resized{i}.jpg", "a", hashlib.sha256(f"copy{i}".encode()).hexdigest(), "lab",
             flip_bits(items[i].phash, rng.sample(range(256), NEAR_DUPLICATE_BITS)))
        for i in range(20)
    ]  # fmt: skip
    plan = plan_split(items + copies, RATIOS, 42)
    assert len(plan.split_of) == 80 and not plan.duplicates
    for i in range(20):
        assert plan.split_of[f"root/a/resized{i}.jpg"] == plan.split_of[items[i].relpath]
        assert sorted([items[i].relpath, f"root/a/resized{i}.jpg"]) in plan.near_duplicates
    # Random 256-bit hashes are about 128 bits apart: no other image is grouped.
    assert len(plan.near_duplicates) == 20


def test_near_duplicate_pairs_match_a_brute_force_count():
    rng = random.Random(9)
    hashes = [random_phash(rng) for _ in range(1500)]
    hashes += [flip_bits(h, rng.sample(range(256), rng.randint(0, 40))) for h in hashes[:300]]
    bits = np.array([[int(c) for c in f"{int(h, 16):0256b}"] for h in hashes])
    distance = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    expected = {(i, j) for i, j in zip(*np.nonzero(distance <= NEAR_DUPLICATE_BITS), strict=True) if i < j}
    assert set(near_duplicate_pairs(hashes)) == expected and len(expected) > 100


def test_same_or_near_same_image_in_two_classes_is_a_conflict():
    items = items_for({"a": 10, "b": 10})
    clash = Item("root/b/clash.jpg", "b", items[0].sha256, "lab", items[0].phash)
    near = Item("root/b/near.jpg", "b", "f" * 64, "lab", flip_bits(items[1].phash, [3, 7]))
    plan = plan_split(items + [clash, near], RATIOS, 42)
    assert set(plan.conflicts) == {"root/a/0.jpg", "root/b/clash.jpg", "root/a/1.jpg", "root/b/near.jpg"}
    assert "label conflict: same bytes as root/a/0.jpg (a)" == plan.conflicts["root/b/clash.jpg"]
    assert "label conflict: near-duplicate of root/a/1.jpg (a)" == plan.conflicts["root/b/near.jpg"]
    assert len(plan.split_of) == 18


def test_a_small_class_still_gets_eval_and_test_images_and_the_report_says_which_moved():
    plan = plan_split(items_for({"a": 3, "b": 200}), RATIOS, 42)
    assert shares(plan, "root/a/") == {"train": 1, "eval": 1, "test": 1}
    assert set(plan.filled) <= {f"root/a/{i}.jpg" for i in range(3)} and plan.filled
    assert not any(p.startswith("root/b/") for p in plan.filled)


def test_each_site_of_a_class_is_spread_over_the_splits():
    items = items_for({"a": 300}, site="lyon", root="one") + items_for({"a": 100}, site="oslo", root="two")
    plan = plan_split(items, RATIOS, 42)
    for root in ("one", "two"):
        assert min(shares(plan, f"{root}/").values()) > 0


def test_a_held_out_root_or_site_goes_whole_to_the_holdout_split():
    items = items_for({"a": 30, "b": 30}, site="lyon", root="one") + items_for({"a": 12}, site="oslo", root="two")
    for hold_out in ("two", "oslo"):
        plan = plan_split(items, RATIOS, 42, hold_out)
        held = {p for p, s in plan.split_of.items() if s == HOLDOUT}
        assert held == {i.relpath for i in items if i.site == "oslo"}
        assert {s for p, s in plan.split_of.items() if p not in held} == set(SPLITS)
    assert split_names("") == list(SPLITS) and split_names("oslo") == [*SPLITS, HOLDOUT]
