"""Exact-duplicate removal and a deterministic, stratified train/eval/test split."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from typing import Iterable

SPLITS = ("train", "eval", "test")


@dataclasses.dataclass(frozen=True)
class Item:
    relpath: str
    label_name: str
    sha256: str


@dataclasses.dataclass
class SplitPlan:
    split_of: dict[str, str]  # relpath -> train/eval/test, for every kept image
    duplicates: dict[str, str]  # relpath -> relpath of the kept copy with the same bytes
    conflicts: dict[str, str]  # relpath -> reason, same bytes under two or more classes


def _order_key(seed: int, sha256: str) -> str:
    return hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()


def split_counts(n: int, ratios: dict[str, float]) -> dict[str, int]:
    """How many of n items go to each split: train and eval rounded, test takes the rest."""
    n_train = round(n * ratios["train"])
    n_eval = min(round(n * ratios["eval"]), n - n_train)
    return {"train": n_train, "eval": n_eval, "test": n - n_train - n_eval}


def plan_split(items: Iterable[Item], ratios: dict[str, float], seed: int) -> SplitPlan:
    """Removes exact duplicates, then splits each class by a seeded hash of the image content.

    Copies with the same SHA-256 in one class keep the first path (sorted) and count the rest as
    duplicates, so a duplicate group never reaches two splits. The same bytes under two classes are
    a label conflict: every copy is set aside. The order within a class depends on the content and
    the seed only, so the split is the same on every machine and for any file naming.
    """
    by_sha: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_sha[item.sha256].append(item)
    plan = SplitPlan({}, {}, {})
    kept_by_class: dict[str, list[Item]] = defaultdict(list)
    for group in by_sha.values():
        group.sort(key=lambda i: i.relpath)
        labels = sorted({i.label_name for i in group})
        if len(labels) > 1:
            for item in group:
                others = ", ".join(f"{i.relpath} ({i.label_name})" for i in group if i is not item)
                plan.conflicts[item.relpath] = f"label conflict: same bytes as {others}"
            continue
        kept_by_class[labels[0]].append(group[0])
        for duplicate in group[1:]:
            plan.duplicates[duplicate.relpath] = group[0].relpath
    for kept in kept_by_class.values():
        kept.sort(key=lambda i: _order_key(seed, i.sha256))
        counts = split_counts(len(kept), ratios)
        start = 0
        for split in SPLITS:
            for item in kept[start : start + counts[split]]:
                plan.split_of[item.relpath] = split
            start += counts[split]
    return plan
