"""`bloodcell score` against the local server over a real socket, on real images and a lab's folder layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from tests.helpers import DATA_ROOTS, real_files

runner = CliRunner()
MUNICH_EXTRA = next(r.path for r in DATA_ROOTS if r.name == "munich-extra")


def lab_folder(tmp_path):
    """A lab's labelled folder: 3 real myeloblasts, 3 real basophils, an empty file, an unknown class."""
    lab = tmp_path / "lab"
    for name in ("myeloblast", "basophil"):
        (lab / name).mkdir(parents=True)
        for f in real_files(name, 3):
            shutil.copy(f, lab / name / f.name)
    (lab / "basophil" / "empty.jpg").write_bytes(b"")
    (lab / "lymphocyte").mkdir()
    shutil.copy(real_files("monocyte", 1)[0], lab / "lymphocyte" / "a.jpg")
    (lab / "README.txt").write_text("how these were labelled")
    return lab


def test_score_judges_the_served_answers_per_site_and_accounts_for_every_file(model_server, model_exports, tmp_path):
    (model_server.base / "2").symlink_to(model_exports["myeloblast"], target_is_directory=True)
    model_server.manager.poll()
    lab = lab_folder(tmp_path)
    result = runner.invoke(app, ["score", f"{lab}=paris", "--server", model_server.target, "--out", "json", "--batch-size", "4"])
    assert result.exit_code == 4, result.output  # a site misses a bar
    report = json.loads(result.stdout)
    assert report["model_versions"] == [2]
    paris = report["sites"]["paris"]
    assert paris["count"] == 6 and paris["accuracy"] == 0.5
    assert paris["recall"] == {"basophil": 0.0, "myeloblast": 1.0}
    assert paris["confusion_matrix"][0][3] == 3  # every basophil called myeloblast
    assert paris["critical_alert_recall"] == 1.0 and paris["other_alert_rate"] == 1.0
    assert report["failures"] == ["site paris: accuracy = 0.5000 on 6 images, required >= 0.95"]
    errors = {i["path"]: i["error"] for i in report["images"] if i["error"]}
    assert errors == {
        "lab/basophil/empty.jpg": "empty file (0 bytes)",
        "lab/lymphocyte/a.jpg": "unknown class folder 'lymphocyte'",
    }
    assert len(report["images"]) == 8  # README.txt is not in a class folder: not an image of the set
    assert report["outside_class_folders"] == ["lab/README.txt"]

    saved = tmp_path / "saved"
    table = runner.invoke(app, ["score", str(lab), "--server", model_server.target, "--save", str(saved)])
    assert table.exit_code == 4, table.output
    assert json.loads((saved / "score.json").read_text())["sites"]["lab"]["confusion_matrix"] == paris["confusion_matrix"]
    with Image.open(saved / "confusion_matrix_lab.png") as png:
        assert png.format == "PNG" and png.width > 300
    assert "site lab: accuracy = 0.5000 on 6 images, required >= 0.95" in table.output  # the folder names the site
    assert "myeloblast 3" in table.output and "2 image(s) not scored" in table.output
    assert "Not in a class folder, not images of the set: lab/README.txt" in table.output


def test_score_reads_the_site_from_the_manifest_and_passes_a_model_that_meets_the_bars(model_server, model_exports, tmp_path):
    (model_server.base / "2").symlink_to(model_exports["basophil"], target_is_directory=True)
    model_server.manager.poll()
    # the test server takes messages up to 4 MB (a TF Serving default is 4 MB too): requests are cut to fit
    fit = ["--set", "serving.max_message_mb=4"]
    result = runner.invoke(app, ["score", MUNICH_EXTRA, "--server", model_server.target, "--out", "json", *fit])
    assert result.exit_code == 4, result.output
    report = json.loads(result.stdout)
    assert list(report["sites"]) == ["munich"]  # MANIFEST.csv's site column, not the folder's name
    munich = report["sites"]["munich"]
    assert munich["count"] == 47 and munich["support"]["myeloblast"] == 6
    assert munich["recall"]["basophil"] == 1.0 and munich["critical_recall"] == 0.0
    assert "site munich: myeloblast recall = 0.0000 on 47 images, required >= 0.99" in report["failures"]

    basophils = tmp_path / "basophils" / "basophil"
    basophils.mkdir(parents=True)
    for f in real_files("basophil", 2):
        shutil.copy(f, basophils / f.name)
    passed = runner.invoke(app, ["score", f"{basophils.parent}=lyon", "--server", model_server.target])
    assert passed.exit_code == 0, passed.output
    assert "Every site meets the bars" in passed.output


def test_score_refuses_a_missing_root_and_reports_a_server_that_is_down(model_server, tmp_path):
    missing = runner.invoke(app, ["score", str(tmp_path / "nowhere"), "--server", model_server.target])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    empty = tmp_path / "empty"
    (empty / "monocyte").mkdir(parents=True)
    nothing = runner.invoke(app, ["score", str(empty), "--server", model_server.target])
    assert nothing.exit_code == 2 and "no files in class folders" in nothing.output
    lab = lab_folder(tmp_path)
    down = runner.invoke(app, ["score", str(lab), "--server", "127.0.0.1:1", "--set", "serving.retries=1"])
    assert down.exit_code == 1 and "UNAVAILABLE" in down.output


def test_score_answers_a_labs_out_of_scope_cells_by_the_gates_bars(model_server, model_exports, tmp_path):
    """A lab's myeloblasts and its lymphocytes (--out-of-scope): a model that calls every cell myeloblast raises
    the alarm on each lymphocyte (a bar missed); one that calls every cell out of scope catches them but calls
    the blasts out of scope too (another bar missed)."""
    lab, others = tmp_path / "lab", tmp_path / "others"
    (lab / "myeloblast").mkdir(parents=True)
    for f in real_files("myeloblast", 2):
        shutil.copy(f, lab / "myeloblast" / f.name)
    (others / "lymphocyte").mkdir(parents=True)
    other_cells = next(r.path for r in DATA_ROOTS if r.out_of_scope)
    for f in real_files("lymphocyte", 3, Path(other_cells)):
        shutil.copy(f, others / "lymphocyte" / f.name)
    args = ["score", f"{lab}=paris", "--out-of-scope", f"{others}=paris", "--server", model_server.target]
    (model_server.base / "2").symlink_to(model_exports["myeloblast"], target_is_directory=True)
    model_server.manager.poll()
    done = runner.invoke(app, [*args, "--out", "json"])
    assert done.exit_code == 4, (done.output[-3000:], done.exception)
    alarmed = json.loads(done.stdout)
    assert alarmed["sites"]["paris"]["count"] == 2  # the blasts alone: the other cells are not one of the five
    assert alarmed["out_of_scope"]["cell_types"] == {
        "lymphocyte @ paris": {"images": 3, "out_of_scope": 0.0, "caught": 0.0, "alerts": 1.0}
    }
    assert "site paris: myeloblast alerts on out-of-scope cells = 1.0000 of 3 images, required <= 0.01" in alarmed["failures"]

    (model_server.base / "3").symlink_to(model_exports["out_of_scope"], target_is_directory=True)
    model_server.manager.poll()
    result = runner.invoke(app, args, terminal_width=160)
    assert result.exit_code == 4
    assert "5 of 5 image(s) scored" in result.output and "lymphocyte @ paris" in result.output
    assert "site paris: in-scope images called out of scope = 1.0000" in result.output
