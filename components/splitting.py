"""Duplicate handling and a stable train/eval/test split.

Each image's split is fixed by a seeded hash of its content against the split ratios (a threshold, not a
rank), so adding files never moves an image that was already there: a scheduled retraining is scored on the
same test images as the model it replaces. Exact copies are removed; near-duplicates (a resized or
re-encoded copy: perceptual hashes within a few bits) are kept, but always in one split, so a copy of a
training image is never scored.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from typing import Iterable

import numpy as np

from contracts.artifacts import HOLDOUT, SPLITS, out_of_scope_split

# Perceptual hash distance (bits of 256) up to which two images are one near-duplicate group. Measured on
# the three default roots: resized (0.5x-1.3x) and JPEG re-encoded (quality 30-90) copies differ by at most
# 6 bits, and no two distinct images of the 7,881 by fewer than 64.
NEAR_DUPLICATE_BITS = 24


def split_names(hold_out: str, out_of_scope: bool = False, out_of_scope_held_out: bool = False) -> list[str]:
    """The splits ImageExampleGen writes: train/eval/test, and `holdout` when a root or site is held out;
    with out-of-scope images, the out-of-scope split beside train/eval/test (`out_of_scope_train`, ...), and
    beside `holdout` when some of them are held out."""
    splits = [*SPLITS, HOLDOUT] if hold_out else list(SPLITS)
    beside = [*SPLITS, *([HOLDOUT] if out_of_scope_held_out else [])] if out_of_scope else []
    return splits + [out_of_scope_split(s) for s in beside]


@dataclasses.dataclass(frozen=True)
class Item:
    relpath: str  # <root name>/<class>/...
    label_name: str
    sha256: str
    site: str
    phash: str = ""  # perceptual hash, hex ("" = unknown: the image is only compared by its bytes)

    @property
    def root_name(self) -> str:
        return self.relpath.split("/", 1)[0]


@dataclasses.dataclass
class SplitPlan:
    split_of: dict[str, str]  # relpath -> train/eval/test (or holdout), for every kept image
    duplicates: dict[str, str]  # relpath -> relpath of the kept copy with the same bytes
    conflicts: dict[str, str]  # relpath -> reason, same or near-same image under two or more classes
    near_duplicates: list[list[str]] = dataclasses.field(default_factory=list)  # groups kept in one split
    filled: dict[str, str] = dataclasses.field(default_factory=dict)  # relpath -> split it was moved to


def _interval(split: str, ratios: dict[str, float]) -> tuple[float, float]:
    low = {"train": 0.0, "eval": ratios["train"], "test": ratios["train"] + ratios["eval"]}[split]
    return low, low + ratios[split]


def hash_position(seed: int, key: str) -> float:
    """A seeded hash of `key` as a number in [0, 1): the image's place against the split ratios."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:16], 16) / 2.0**64


def split_by_threshold(position: float, ratios: dict[str, float]) -> str:
    """train below ratios[train], eval below ratios[train] + ratios[eval], test above."""
    return next((s for s in SPLITS[:-1] if position < _interval(s, ratios)[1]), SPLITS[-1])


def near_duplicate_pairs(phashes: list[str], max_bits: int = NEAR_DUPLICATE_BITS) -> list[tuple[int, int]]:
    """Index pairs (i < j) of perceptual hashes that differ in at most `max_bits` bits (chunked, O(n^2))."""
    if len(phashes) < 2:
        return []
    bits = np.array([np.unpackbits(np.frombuffer(bytes.fromhex(h), np.uint8)) for h in phashes], np.float32)
    pairs = []
    for start in range(0, len(bits), 1024):
        chunk = bits[start : start + 1024]
        distance = chunk @ (1.0 - bits).T + (1.0 - chunk) @ bits.T
        rows, cols = np.nonzero(distance <= max_bits)
        pairs += [(start + r, c) for r, c in zip(rows.tolist(), cols.tolist(), strict=True) if start + r < c]
    return pairs


def _groups(count: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components of `count` nodes joined by `pairs` (union-find), each sorted."""
    parent = list(range(count))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[find(i)] = find(j)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(count):
        members[find(i)].append(i)
    return [sorted(m) for m in members.values()]


def _fill_empty_splits(plan: SplitPlan, groups: list[list[Item]], positions: list[float], ratios: dict[str, float]) -> None:
    """A class without an image in eval or test (only in very small folders) gets, from its largest split,
    the group whose hash lies nearest the empty split's interval: the one rule that moves an image, and
    only while the class is that small. `plan.filled` names what moved."""
    for label in sorted({g[0].label_name for g in groups}):
        mine = [k for k, g in enumerate(groups) if g[0].label_name == label]
        for split in ("eval", "test"):
            split_of = {k: plan.split_of[groups[k][0].relpath] for k in mine}
            sizes = {s: sum(v == s for v in split_of.values()) for s in SPLITS}
            largest = max(SPLITS, key=lambda s: sizes[s])
            if sizes[split] or sizes[largest] < 2:
                continue
            low, high = _interval(split, ratios)
            donor = min((k for k in mine if split_of[k] == largest), key=lambda k: max(low - positions[k], positions[k] - high))
            plan.split_of.update({i.relpath: split for i in groups[donor]})
            plan.filled.update({i.relpath: split for i in groups[donor]})


def plan_split(items: Iterable[Item], ratios: dict[str, float], seed: int, hold_out: str = "") -> SplitPlan:
    """Removes exact duplicates, groups near-duplicates, and gives each group one split by a seeded hash.

    Copies with the same SHA-256 in one class (in one root or across roots) keep the first path (sorted)
    and count the rest as duplicates. Images within NEAR_DUPLICATE_BITS of each other form a group that
    goes to one split, placed by the hash of its smallest SHA-256. The same or a near-same image under two
    classes is a label conflict: every copy is set aside. Kept images whose root name or site is `hold_out`
    all go to the `holdout` split. The split depends on the content and the seed only: the same on every
    machine, for any file naming, and unchanged for existing images when files are added.
    """
    by_sha: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_sha[item.sha256].append(item)
    plan = SplitPlan({}, {}, {})
    kept: list[Item] = []
    for sha in sorted(by_sha):
        group = sorted(by_sha[sha], key=lambda i: i.relpath)
        if len({i.label_name for i in group}) > 1:
            for item in group:
                others = ", ".join(f"{i.relpath} ({i.label_name})" for i in group if i is not item)
                plan.conflicts[item.relpath] = f"label conflict: same bytes as {others}"
            continue
        plan.duplicates.update({duplicate.relpath: group[0].relpath for duplicate in group[1:]})
        kept.append(group[0])
    hashed = [i for i, item in enumerate(kept) if item.phash]
    pairs = [(hashed[a], hashed[b]) for a, b in near_duplicate_pairs([kept[i].phash for i in hashed])]
    groups: list[list[Item]] = []
    for members in _groups(len(kept), pairs):
        group = [kept[i] for i in members]
        if len({i.label_name for i in group}) > 1:
            for item in group:
                others = ", ".join(f"{i.relpath} ({i.label_name})" for i in group if i is not item)
                plan.conflicts[item.relpath] = f"label conflict: near-duplicate of {others}"
            continue
        if len(group) > 1:
            plan.near_duplicates.append(sorted(i.relpath for i in group))
        groups.append(group)
    trained, positions = [], []
    for group in groups:
        if hold_out and any(hold_out in (i.root_name, i.site) for i in group):
            plan.split_of.update({i.relpath: HOLDOUT for i in group})
            continue
        position = hash_position(seed, min(i.sha256 for i in group))
        plan.split_of.update({i.relpath: split_by_threshold(position, ratios) for i in group})
        trained.append(group)
        positions.append(position)
    _fill_empty_splits(plan, trained, positions, ratios)
    plan.near_duplicates.sort()
    return plan
