"""Grad-CAM explanations: the `explain` signature, the overlay picture, `bloodcell explain` and POST /explain."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from contracts.artifacts import served_versions
from contracts.signatures import SERVING_INPUT, Explanation
from serving.client import ServingClient, ServingError
from serving.explain import explain_with_saved_model, overlay_png
from serving.web_app import create_app, upload_limits
from tests.helpers import CONFIG, image_bytes, real_files

runner = CliRunner()
WHOLE = (0.0, 0.0, 1.0, 1.0)  # a window covering the whole image


def test_overlay_has_the_image_size_and_draws_heat_where_the_map_is_hot():
    image = image_bytes("PNG", size=(120, 80))
    heatmap = np.zeros((16, 16), np.float32)
    heatmap[6:10, 6:10] = 1.0  # hot centre
    overlay = Image.open(io.BytesIO(overlay_png(image, Explanation("monocyte", heatmap, WHOLE)))).convert("RGB")
    assert overlay.size == (120, 80)
    pixels = np.asarray(overlay).astype(int)
    original = np.asarray(Image.open(io.BytesIO(image)).convert("RGB")).astype(int)
    centre, corner = pixels[40, 60] - original[40, 60], pixels[2, 2] - original[2, 2]
    assert centre[0] > centre[2] and corner[2] > corner[0]  # red where hot, blue where cold (jet colours)


def test_overlay_covers_only_the_window_the_model_saw():
    image = image_bytes("PNG", size=(100, 100))
    window = (0.1, 0.5, 0.4, 0.4)  # top, left, height, width: rows 10-50, columns 50-90
    overlay = np.asarray(Image.open(io.BytesIO(overlay_png(image, Explanation("monocyte", np.ones((8, 8)), window)))))
    original = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
    changed = np.any(overlay != original, axis=-1)
    assert changed[10:50, 50:90].all() and not changed[:10].any() and not changed[:, :50].any() and not changed[50:].any()


def test_explain_signature_returns_a_map_per_image(model_exports):
    images = [f.read_bytes() for f in real_files("monocyte", 2) + real_files("erythroblast", 2)]
    size = CONFIG.preprocessing.image_size
    served = tf.saved_model.load(str(model_exports["random"])).signatures["serving_default"]
    served_classes = served(**{SERVING_INPUT: tf.constant(images)})["predicted_class"].numpy()
    for image, served_class in zip(images, served_classes, strict=True):
        explanation = explain_with_saved_model(model_exports["random"], image)
        assert explanation.predicted_class == served_class.decode()  # the map explains the served prediction
        heatmap = explanation.heatmap
        assert heatmap.shape == (size, size) and 0.0 <= heatmap.min() and heatmap.max() <= 1.0 + 1e-6
        top, left, height, width = explanation.window
        assert 0 <= top and 0 <= left and 0 < height and top + height <= 1 + 1e-6 and left + width <= 1 + 1e-6


def test_explain_command_writes_an_overlay_of_the_image_size(model_exports, tmp_path):
    source = real_files("myeloblast", 1)[0]
    image = tmp_path / source.name
    image.write_bytes(source.read_bytes())
    result = runner.invoke(app, ["explain", str(image), "--model-dir", str(model_exports["myeloblast"])])
    assert result.exit_code == 0, result.output
    written = image.with_name(image.stem + ".gradcam.png")
    assert "predicted myeloblast" in result.output and str(written) in result.output
    assert Image.open(written).size == Image.open(image).size
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    refused = runner.invoke(app, ["explain", str(text), "--model-dir", str(model_exports["myeloblast"])])
    assert refused.exit_code == 2 and "notes.jpg: not an image" in refused.output


def test_explain_over_grpc_and_the_web_endpoint(model_server):
    image = real_files("basophil", 1)[0].read_bytes()
    with ServingClient(model_server.target, CONFIG.model_name) as client:
        remote = client.explain(image)
        local = explain_with_saved_model(model_server.base / "1", image)
    predicted = remote.predicted_class
    assert predicted == local.predicted_class and remote.window == local.window
    np.testing.assert_allclose(remote.heatmap, local.heatmap, atol=1e-5)
    grpc_client = ServingClient(model_server.target, CONFIG.model_name)
    web = TestClient(create_app(grpc_client, CONFIG.critical_class, upload_limits(CONFIG)), raise_server_exceptions=False)
    response = web.post("/explain", files={"file": ("cell.jpg", image, "image/jpeg")})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-predicted-class"] == predicted
    assert Image.open(io.BytesIO(response.content)).size == Image.open(io.BytesIO(image)).size
    bad = web.post("/explain", files={"file": ("notes.jpg", b"plain text", "image/jpeg")})
    assert bad.status_code == 422 and "notes.jpg: not an image" in bad.json()["detail"]


PUSHED = Path(CONFIG.paths.serving_root) / CONFIG.model_name


@pytest.mark.skipif(
    not served_versions(str(PUSHED)),
    reason=f"needs a model trained on the full data (`make run` pushes one to {PUSHED}); "
    "the few-epoch models of the other tests have not learned where the cell is",
)
def test_heat_concentrates_on_the_cell_for_the_pushed_model():
    """On real images (cell centred), a trained model's heat lies inside more than on the border."""
    model_dir = PUSHED / str(served_versions(str(PUSHED))[-1])
    centre, border = [], []
    for name in CONFIG.classes:
        for f in real_files(name, 2):
            heatmap = explain_with_saved_model(model_dir, f.read_bytes()).heatmap
            q = heatmap.shape[0] // 4
            centre.append(heatmap[q:-q, q:-q].mean())
            border.append(np.concatenate([heatmap[:q].ravel(), heatmap[-q:].ravel()]).mean())
    assert np.mean(centre) > 2 * np.mean(border)


def test_a_model_exported_without_the_window_gets_a_clear_error(tmp_path):
    """Models exported before the explain signature said where the CNN looked cannot be drawn: say so."""

    class OldExplain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SERVING_INPUT)])
        def explain(self, image_bytes):
            n = tf.shape(image_bytes)[0]
            return {"heatmap": tf.zeros([n, 4, 4]), "predicted_class": tf.fill([n], "monocyte")}

    module = OldExplain()
    tf.saved_model.save(module, str(tmp_path / "old"), signatures={"explain": module.explain})
    with pytest.raises(ServingError, match="no 'window' output .* run the pipeline"):
        explain_with_saved_model(tmp_path / "old", image_bytes("PNG", size=(40, 40)))
