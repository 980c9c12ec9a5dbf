"""Exact-duplicate removal and a deterministic train/eval/test split, stratified by class and site."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from typing import Iterable

SPLITS = ("train", "eval", "test")
HOLDOUT = "holdout"  # every image of a held-out root or site: scored, never trained on


def split_names(hold_out: str) -> list[str]:
    """The splits ImageExampleGen writes: train/eval/test, and `holdout` when a root or site is held out."""
    return [*SPLITS, HOLDOUT] if hold_out else list(SPLITS)


@dataclasses.dataclass(frozen=True)
class Item:
    relpath: str  # <root name>/<class>/...
    label_name: str
    sha256: str
    site: str

    @property
    def root_name(self) -> str:
        return self.relpath.split("/", 1)[0]


@dataclasses.dataclass
class SplitPlan:
    split_of: dict[str, str]  # relpath -> train/eval/test (or holdout), for every kept image
    duplicates: dict[str, str]  # relpath -> relpath of the kept copy with the same bytes
    conflicts: dict[str, str]  # relpath -> reason, same bytes under two or more classes


def _order_key(seed: int, sha256: str) -> str:
    return hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()


def split_counts(n: int, ratios: dict[str, float]) -> dict[str, int]:
    """How many of n items go to each split: train and eval rounded, test takes the rest."""
    n_train = round(n * ratios["train"])
    n_eval = min(round(n * ratios["eval"]), n - n_train)
    return {"train": n_train, "eval": n_eval, "test": n - n_train - n_eval}


def plan_split(items: Iterable[Item], ratios: dict[str, float], seed: int, hold_out: str = "") -> SplitPlan:
    """Removes exact duplicates, then splits each class x site group by a seeded hash of the image content.

    Copies with the same SHA-256 in one class (in one root or across roots) keep the first path (sorted)
    and count the rest as duplicates, so a duplicate group never reaches two splits. The same bytes under
    two classes are a label conflict: every copy is set aside. The order within a group depends on the
    content and the seed only, so the split is the same on every machine and for any file naming.
    Kept images whose root name or site is `hold_out` all go to the `holdout` split.
    """
    by_sha: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_sha[item.sha256].append(item)
    plan = SplitPlan({}, {}, {})
    kept_by_group: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for group in by_sha.values():
        group.sort(key=lambda i: i.relpath)
        labels = sorted({i.label_name for i in group})
        if len(labels) > 1:
            for item in group:
                others = ", ".join(f"{i.relpath} ({i.label_name})" for i in group if i is not item)
                plan.conflicts[item.relpath] = f"label conflict: same bytes as {others}"
            continue
        kept = group[0]
        for duplicate in group[1:]:
            plan.duplicates[duplicate.relpath] = kept.relpath
        if hold_out and hold_out in (kept.root_name, kept.site):
            plan.split_of[kept.relpath] = HOLDOUT
        else:
            kept_by_group[(kept.label_name, kept.site)].append(kept)
    for kept in kept_by_group.values():
        kept.sort(key=lambda i: _order_key(seed, i.sha256))
        counts = split_counts(len(kept), ratios)
        start = 0
        for split in SPLITS:
            for item in kept[start : start + counts[split]]:
                plan.split_of[item.relpath] = split
            start += counts[split]
    return plan
