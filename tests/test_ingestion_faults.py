"""Ingestion under faults: a folder with one file per fault kind beside real images. Every file is
accounted for (ingested, duplicate, or rejected with its reason), nothing stops the run, and the accounting
is checked against the files listed, not against the outputs."""

from __future__ import annotations

import json
import os

import pytest
from PIL import ImageFile

from components.image_example_gen import check_accounting
from components.image_verification import IngestionError, find_candidates, verify_image
from contracts.artifacts import SPLITS
from contracts.data_roots import DataRoot
from contracts.image_check import Limits
from tests.helpers import image_bytes
from tests.helpers.faults import ROOT_NAME, build_faulty_root, good_files, ingest_in_subprocess, restore_permissions


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    top = tmp_path_factory.mktemp("faults")
    root, faults = build_faulty_root(top)
    try:
        done = ingest_in_subprocess(root, top / "out")
    finally:
        restore_permissions(root)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((top / "out" / "report.json").read_text()), faults, root


def test_the_catalogue_has_at_least_fifteen_fault_kinds(faulty_run):
    _, faults, _ = faulty_run
    assert len({f.kind for f in faults if f.outcome != "ingested"}) >= 15


def test_every_fault_gets_its_outcome_and_reason(faulty_run):
    report, faults, _ = faulty_run
    reasons = {r["file"]: r["reason"] for r in report["rejections"]}
    duplicates = {d["file"] for d in report["duplicate_files"]}
    for fault in faults:
        if fault.outcome == "rejected":
            assert fault.file in reasons, (fault.kind, fault.file)
            assert reasons[fault.file].startswith(fault.reason), (fault.kind, reasons[fault.file])
        elif fault.outcome == "duplicate":
            assert fault.file in duplicates, fault.kind
        else:
            assert fault.file not in reasons and fault.file not in duplicates, fault.kind


def test_every_listed_file_is_accounted_for_and_no_good_image_is_lost(faulty_run):
    report, faults, root = faulty_run
    good = good_files(root, faults)
    assert report["found"] == len(good) + len(faults)
    assert report["found"] == report["ingested"] + report["duplicates"] + report["rejected"]
    assert report["ingested"] == len(good) + sum(f.outcome == "ingested" for f in faults)
    assert report["converted"] == [{"file": f"{ROOT_NAME}/basophil/alpha.tiff", "from": "TIFF RGBA"}]
    assert report["ignored_loose_files"] == [f"{ROOT_NAME}/README.md"]
    assert min(sum(n[s] for n in report["counts"].values()) for s in SPLITS) > 0


def test_a_near_duplicate_in_one_class_is_kept_in_its_originals_split(faulty_run):
    report, _, _ = faulty_run
    group = [g for g in report["near_duplicate_groups"] if f"{ROOT_NAME}/seg_neutrophil/resized.jpg" in g]
    assert len(group) == 1 and len(group[0]) == 2


def test_a_decoder_error_of_any_type_is_a_rejection_not_a_crash(tmp_path, monkeypatch):
    """Pillow's plugins have raised struct.error, IndexError and others on hostile files; none may stop a run."""
    (tmp_path / "basophil").mkdir()
    (tmp_path / "basophil" / "odd.png").write_bytes(image_bytes("PNG", seed=3))

    def broken_decoder(self):
        raise IndexError("tile index out of range")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_decoder)
    candidates, _ = find_candidates([DataRoot(str(tmp_path), "lab")], ["basophil"])
    result = verify_image(candidates[0], Limits(10**8, 8, 10**8))
    assert result.reason == "truncated or corrupt PNG (IndexError): tile index out of range"


def test_a_file_that_vanishes_after_listing_is_a_rejection(tmp_path):
    (tmp_path / "basophil").mkdir()
    (tmp_path / "basophil" / "short-lived.jpg").write_bytes(image_bytes(seed=4))
    candidates, _ = find_candidates([DataRoot(str(tmp_path), "lab")], ["basophil"])
    os.remove(tmp_path / "basophil" / "short-lived.jpg")
    assert verify_image(candidates[0], Limits(10**8, 8, 10**8)).reason == "file disappeared after it was listed"


def test_the_accounting_check_names_a_lost_file_and_a_file_with_two_outcomes():
    check_accounting(["a", "b"], ["b", "a"])
    with pytest.raises(IngestionError, match=r"2 listed files failed \(no outcome: b; two outcomes: a\)"):
        check_accounting(["a", "b"], ["a", "a"])
    with pytest.raises(IngestionError, match=r"not listed: c"):
        check_accounting(["a"], ["a", "c"])

