"""`bloodcell predict` and `bloodcell status` against the local server over a real socket."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import app
from contracts.image_check import Limits
from serving.client import ServingClient
from serving.screening import RequestCaps, screen_images
from tests.helpers import CONFIG, free_port, image_bytes, real_files

runner = CliRunner()


def test_predict_prints_every_input_and_flags_myeloblasts(model_server, model_exports, tmp_path):
    (model_server.base / "2").symlink_to(model_exports["myeloblast"], target_is_directory=True)
    model_server.manager.poll()
    folder = tmp_path / "images"
    folder.mkdir()
    for f in real_files("basophil", 3):
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    result = runner.invoke(
        app, ["predict", str(folder), "--server", model_server.target, "--out", "json", "--batch-size", "2"]
    )
    assert result.exit_code == 3, result.output  # some inputs not classified
    rows = {r["file"].split("/")[-1]: r for r in json.loads(result.stdout)}
    assert len(rows) == 5
    assert rows["notes.txt"]["error"] == "not an image (unrecognised content)"
    assert rows["empty.jpg"]["error"] == "empty file (0 bytes)"
    classified = [r for r in rows.values() if not r["error"]]
    assert len(classified) == 3
    assert all(r["predicted_class"] == "myeloblast" and r["myeloblast_alert"] and r["model_version"] == 2 for r in classified)

    files = [str(f) for f in real_files("monocyte", 2)]
    table = runner.invoke(app, ["predict", *files, "--server", model_server.target], env={"COLUMNS": "80"})
    assert table.exit_code == 0, table.output
    assert "2 of 2 image(s) flagged as myeloblast" in table.output
    rows = [line for line in table.output.splitlines() if "MYELOBLAST" in line]
    assert len(rows) == 2 and all(" myeloblast " in row for row in rows)  # class and alert on one line
    assert max(len(line) for line in table.output.splitlines()) <= 80  # an 80-column terminal


def test_a_batch_mixing_good_and_refused_images_answers_the_good_ones(model_server):
    # Locally lax limits let an 8x8 image through; the served model refuses it (min_side), so the
    # batch is retried image by image and the refusal is reported by index.
    lax = Limits(max_pixels=10**8, min_side=1, max_file_bytes=10**8)
    good = [f.read_bytes() for f in real_files("seg_neutrophil", 2)]
    items = [("a", good[0]), ("tiny", image_bytes(size=(8, 8))), ("b", good[1])]
    with ServingClient(model_server.target, CONFIG.model_name) as client:
        outcomes = screen_images(client, items, lax, RequestCaps.of(CONFIG.serving, 8))
    assert [o.index for o in outcomes] == [0, 1, 2]
    assert outcomes[0].prediction and outcomes[2].prediction and outcomes[1].prediction is None
    assert "min_side" in outcomes[1].error


def test_status_shows_versions_and_signatures(model_server):
    result = runner.invoke(app, ["status", "--server", model_server.target])
    assert result.exit_code == 0, result.output
    assert "version 1: AVAILABLE" in result.output and "image_bytes (DT_STRING)" in result.output


def test_server_down_or_unknown_model_exits_nonzero_with_a_readable_message(model_server):
    image = str(real_files("myeloblast", 1)[0])
    down = runner.invoke(app, ["predict", image, "--server", f"127.0.0.1:{free_port()}", "--set", "serving.retries=1"])
    assert down.exit_code == 1
    assert "error: UNAVAILABLE: TF Serving at 127.0.0.1:" in down.output and "unreachable" in down.output
    unknown = runner.invoke(app, ["predict", image, "--server", model_server.target, "--model", "other"])
    assert unknown.exit_code == 1 and "NOT_FOUND" in unknown.output and "other" in unknown.output
    version = runner.invoke(app, ["predict", image, "--server", model_server.target, "--version", "9"])
    assert version.exit_code == 1 and "Specific(bloodcell, 9)" in version.output
    missing = runner.invoke(app, ["predict", "/no/such/file.jpg", "--server", model_server.target])
    assert missing.exit_code == 2 and "no such file" in missing.output
