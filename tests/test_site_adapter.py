"""components/site_adapter.py, `bloodcell adapt|sites` and the served choice per site: adapting on a small real
subset of a site, the refusals of degenerate input, rollback, and the base model's answers bit for bit for every
other site, over gRPC, on the command line and on the web endpoint."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from components.site_adapter import AUTO_METHODS, AdaptationRefusedError, adapt_site, check_alerts, rollback_site
from contracts.artifacts import ADAPTATION_FILE, read_json
from contracts.image_check import Limits
from contracts.signatures import site_model_name
from contracts.site_models import MODEL_CONFIG_FILE, read_model_server_config
from serving.client import ServingClient
from serving.model_server import start_server
from serving.web_app import create_app, upload_limits
from tests.helpers import CONFIG, DATA_ROOTS, SMALL_TRAINER_CONFIG, export_model, real_files
from training.export import export_serving_model
from training.site_adaptation import adapted_to_site, batch_norm_layers, restored_model

MARROW = next(r.path for r in DATA_ROOTS if r.name == "mll-marrow")
BARCELONA = next(r.path for r in DATA_ROOTS if r.name == "barcelona-extra")
LIMITS = Limits(CONFIG.serving.max_image_pixels, CONFIG.ingestion.min_side, CONFIG.ingestion.max_file_bytes)
SETTINGS = dataclasses.replace(CONFIG.adaptation, min_images=20)  # a small real subset; the default needs 200
MODEL = CONFIG.model_name
runner = CliRunner()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def site_folder(top: Path, per_class: int = 12) -> Path:
    """Real marrow monocytes and blasts in class folders (whose names adaptation never reads), and a note."""
    for name in ("monocyte", "myeloblast"):
        (top / name).mkdir(parents=True)
        for f in real_files(name, per_class, Path(MARROW)):
            shutil.copy(f, top / name / f.name)
    (top / "notes.txt").write_text("scanned 2026-11")
    return top


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A small exported CNN whose batch-norm statistics are those of real Barcelona cells (its training site)."""
    import tensorflow as tf

    from training.preprocessing import preprocess_batch

    top = tmp_path_factory.mktemp("base")
    model = restored_model(str(export_model(top / "random", seed=3)), SMALL_TRAINER_CONFIG)
    images = [f.read_bytes() for name in ("basophil", "monocyte") for f in real_files(name, 16, Path(BARCELONA))]
    pixels = preprocess_batch(tf.constant(images), SMALL_TRAINER_CONFIG.preprocessing)[0].numpy()
    export_serving_model(adapted_to_site(model, pixels, 2), SMALL_TRAINER_CONFIG, str(top / "model"))
    return top / "model"


@pytest.fixture
def serving_root(tmp_path, base_model) -> Path:
    root = tmp_path / "serving"
    shutil.copytree(base_model, root / MODEL / "1")
    return root


def adapt(base_model: Path, folder: Path, serving_root: Path, settings=SETTINGS):
    return adapt_site(str(base_model), str(folder), "paris", settings, LIMITS, str(serving_root), MODEL, 1)


def test_adapting_publishes_a_version_of_the_sites_model_and_leaves_the_base_as_it_was(tmp_path, base_model, serving_root):
    before = tree_digest(serving_root / MODEL)
    record = adapt(base_model, site_folder(tmp_path / "paris"), serving_root)
    assert tree_digest(serving_root / MODEL) == before
    version = serving_root / site_model_name(MODEL, "paris") / str(record.version)
    assert (version / "saved_model.pb").is_file()
    assert read_json(str(version), ADAPTATION_FILE)["images_used"] == 24 == record.images_used
    assert record.images_rejected == {"notes.txt": "not an image (unrecognised content)"}
    assert record.base_version == 1 and record.method in AUTO_METHODS and len(record.drift) == 2
    listed = read_model_server_config(str(serving_root / MODEL_CONFIG_FILE))
    assert listed == {MODEL: str(serving_root / MODEL), "bloodcell-site-paris": str(version.parent)}
    base, adapted = (restored_model(str(d), SMALL_TRAINER_CONFIG) for d in (base_model, version))
    pairs = zip(batch_norm_layers(base), batch_norm_layers(adapted), strict=True)
    moved = [not np.allclose(a.moving_mean.numpy(), b.moving_mean.numpy()) for a, b in pairs]
    assert moved == [True, True]  # the site's own statistics; the learnt weights are the base model's
    learnt = [(a, b) for a, b in zip(base.weights, adapted.weights, strict=True) if "moving" not in a.name]
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in learnt)


def test_degenerate_folders_are_refused_with_the_cause(tmp_path, base_model, serving_root):
    few = site_folder(tmp_path / "few", per_class=5)
    with pytest.raises(AdaptationRefusedError, match=r"10 usable distinct images, adaptation needs at least 20"):
        adapt(base_model, few, serving_root)
    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(30):  # thirty different colours, each image one colour
        (blank / f"{i}.png").write_bytes(png(np.full((64, 64, 3), (8 * i, 255 - 8 * i, 100))))
    with pytest.raises(AdaptationRefusedError, match=r"0 usable distinct images.*30 blank or a single colour"):
        adapt(base_model, blank, serving_root)
    repeated = tmp_path / "repeated"
    repeated.mkdir()
    one = real_files("myeloblast", 1, Path(MARROW))[0].read_bytes()
    for i in range(30):
        (repeated / f"copy_{i}.jpg").write_bytes(one)
    with pytest.raises(AdaptationRefusedError, match=r"1 usable distinct images.*29 a repeat of another image"):
        adapt(base_model, repeated, serving_root)
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        (noise / f"{i}.png").write_bytes(png(rng.integers(0, 256, (128, 128, 3))))
    with pytest.raises(
        AdaptationRefusedError,
        match=r"paris: the images are too far from what the model was trained on .* \(drift 1\.\d+ over adaptation.max_drift 0.6",
    ):
        adapt(base_model, noise, serving_root)
    assert not (serving_root / site_model_name(MODEL, "paris")).exists()  # nothing published
    assert not (serving_root / MODEL_CONFIG_FILE).exists()


def test_an_adaptation_that_raises_fewer_alerts_or_silences_a_confident_one_is_refused():
    check_alerts(0.002, 0.010, 3, 3, SETTINGS, "paris", "myeloblast")  # more alerts, every confident one kept
    with pytest.raises(AdaptationRefusedError, match=r"alert on 23.3% of the site's images, the base model on 36.3%"):
        check_alerts(0.363, 0.233, 77, 77, SETTINGS, "paris", "myeloblast")
    check_alerts(0.363, 0.353, 77, 77, dataclasses.replace(SETTINGS, max_alert_share_drop=0.02), "paris", "myeloblast")
    with pytest.raises(AdaptationRefusedError, match=r"silences 3 of the 210 myeloblast alerts .* confidence >= 0.97"):
        check_alerts(0.5, 0.6, 210, 207, SETTINGS, "paris", "myeloblast")


def predictions(target: str, images: list[bytes], site: str | None):
    with ServingClient(target, MODEL, site=site) as client:
        return client.predict(images)


def test_the_site_gets_its_model_over_grpc_and_every_other_site_the_base_models_answers_bit_for_bit(
    tmp_path, base_model, serving_root
):
    running = start_server(
        MODEL, serving_root / MODEL, port=0, poll_wait_s=60, model_config_file=serving_root / MODEL_CONFIG_FILE
    )
    target = f"127.0.0.1:{running.port}"
    images = [f.read_bytes() for f in real_files("basophil", 6, Path(BARCELONA)) + real_files("monocyte", 6, Path(MARROW))]
    try:
        alone = predictions(target, images, None)  # no models.config yet: the base model alone
        record = adapt(base_model, site_folder(tmp_path / "paris"), serving_root)
        running.models.poll()
        for site in (None, "barcelona", "nowhere"):  # a trained site, an unknown site: the base model
            answers = predictions(target, images, site)
            assert [a.probabilities for a in answers] == [a.probabilities for a in alone]
            assert {(a.model_name, a.model_version) for a in answers} == {(MODEL, 1)}
        adapted = predictions(target, images, "paris")
        assert {(a.model_name, a.model_version) for a in adapted} == {("bloodcell-site-paris", record.version)}
        assert [a.probabilities for a in adapted] != [a.probabilities for a in alone]

        shown = runner.invoke(
            app, ["predict", str(real_files("monocyte", 1, Path(MARROW))[0]), "--server", target, "--site", "paris"]
        )
        assert shown.exit_code == 0, shown.output
        assert f"Answered by model bloodcell-site-paris version {record.version}." in shown.stdout
        bad = runner.invoke(
            app, ["predict", str(real_files("monocyte", 1, Path(MARROW))[0]), "--server", target, "--site", "a/b"]
        )
        assert bad.exit_code == 2 and "site 'a/b': use letters" in bad.output

        labs = [tmp_path / "paris-cells", tmp_path / "lyon-cells"]
        for lab in labs:
            for name in ("monocyte", "myeloblast"):
                (lab / name).mkdir(parents=True)
                for f in real_files(name, 3, Path(MARROW)):
                    shutil.copy(f, lab / name / f.name)
        roots = [f"{labs[0]}=paris", f"{labs[1]}=lyon"]
        scored = runner.invoke(app, ["score", *roots, "--server", target, "--adapted", "--out", "json"])
        assert scored.exit_code in (0, 4), scored.output
        report = json.loads(scored.stdout)
        assert report["models"] == ["bloodcell 1", f"bloodcell-site-paris {record.version}"]  # lyon: no model of its own
        assert report["base"]["models"] == ["bloodcell 1"] and set(report["sites"]) == {"paris", "lyon"}
        side = runner.invoke(app, ["score", roots[0], "--server", target, "--adapted"])
        assert "Base model / the site's adapted model" in side.stdout and "bloodcell-site-paris" in side.stdout

        with ServingClient(target, MODEL) as client:
            web = TestClient(create_app(client, CONFIG.critical_class, upload_limits(CONFIG)))
            files = [("files", ("m.jpg", images[-1], "image/jpeg"))]
            page = web.post("/predict", files=files, data={"site": "paris"}).json()
            assert page["answered_by"] == [f"bloodcell-site-paris version {record.version}"]
            assert page["results"][0]["probabilities"] == adapted[-1].probabilities
            assert web.post("/predict", files=files).json()["answered_by"] == ["bloodcell version 1"]
            explained = web.post("/explain", files={"file": ("m.jpg", images[-1], "image/jpeg")}, data={"site": "paris"})
            assert explained.status_code == 200 and explained.headers["X-Model"] == "bloodcell-site-paris"

        taken, now = rollback_site(str(serving_root), MODEL, "paris")
        assert (taken, now) == (record.version, None)
        running.models.poll()
        assert [a.probabilities for a in predictions(target, images, "paris")] == [a.probabilities for a in alone]
        with pytest.raises(AdaptationRefusedError, match="no adapted version"):
            rollback_site(str(serving_root), MODEL, "paris")
    finally:
        running.stop()


def test_adapt_sites_and_rollback_on_the_command_line(tmp_path, base_model, serving_root):
    folder = site_folder(tmp_path / "lyon")
    common = ["--set", f"paths.serving_root={serving_root}", "--set", f"paths.output_root={tmp_path / 'out'}"]
    common += ["--set", "adaptation.min_images=20"]
    first = runner.invoke(app, ["adapt", str(folder), "--site", "lyon", *common])
    assert first.exit_code == 0, first.output
    assert re.search(r"lyon: adapted \((balanced_)?adabn, first 2 blocks\)", first.stdout)  # all the small model has
    assert "24 used, 1 rejected, 0 repeats" in first.stdout and "served as bloodcell-site-lyon version" in first.stdout
    assert "MLflow: " in first.stdout and "error" not in first.stdout.split("MLflow: ")[1].splitlines()[0].lower()
    second = runner.invoke(app, ["adapt", str(folder), "--site", "lyon", *common])
    assert second.exit_code == 0, second.output
    versions = sorted(int(p.name) for p in (serving_root / "bloodcell-site-lyon").iterdir())
    listed = runner.invoke(app, ["sites", "--json", *common[:2]])
    assert listed.exit_code == 0 and json.loads(listed.stdout)[0]["versions"] == versions
    back = runner.invoke(app, ["adapt", "--site", "lyon", "--rollback", *common])
    assert (
        back.exit_code == 0 and f"version {versions[1]} rolled back; version {versions[0]} of bloodcell-site-lyon" in back.stdout
    )
    refused = runner.invoke(app, ["adapt", str(site_folder(tmp_path / "few", 3)), "--site", "lyon", *common])
    assert refused.exit_code == 3 and "refused: " in refused.output and "6 usable distinct images" in refused.output
    old = tmp_path / "old"
    shutil.copytree(base_model, old)
    (old / "assets.extra" / "trainer_config.json").unlink()
    stale = runner.invoke(app, ["adapt", str(folder), "--site", "lyon", "--model", str(old), *common])
    assert stale.exit_code == 3 and "exported without assets.extra/trainer_config.json" in stale.output
    shown = runner.invoke(app, ["sites", *common[:2]])
    assert shown.exit_code == 0 and f"lyon: version {versions[0]} of 1 (" in shown.stdout
