"""The FastAPI endpoint in front of the local TF-Serving-compatible server (real gRPC socket)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serving.client import ServingClient
from serving.web_app import create_app, upload_limits
from tests.helpers import CONFIG, bomb_png, free_port, image_bytes, png_header, real_files


def web_client(target: str, model: str = CONFIG.model_name, retries: int = 3) -> TestClient:
    grpc_client = ServingClient(target, model, retries=retries)
    return TestClient(create_app(grpc_client, CONFIG.critical_class, upload_limits(CONFIG)), raise_server_exceptions=False)


@pytest.fixture
def web(model_server):
    return web_client(model_server.target)


def upload(*items: tuple[str, bytes, str]) -> list:
    return [("files", item) for item in items]


def test_health_readiness_and_docs(web):
    assert web.get("/healthz").json() == {"status": "ok"}
    assert web.get("/readyz").json() == {"ready": True, "model": CONFIG.model_name, "version": 1}
    assert "/predict" in web.get("/openapi.json").json()["paths"]
    assert web.get("/docs").status_code == 200
    page = web.get("/")
    assert page.status_code == 200 and "Blood-cell screening" in page.text


def test_predict_many_images_with_per_file_errors(web):
    files = [real_files(c, 1)[0] for c in ("myeloblast", "basophil")]
    jpeg = files[0].read_bytes()
    response = web.post(
        "/predict",
        files=upload(
            (files[0].name, jpeg, "image/jpeg"),
            ("notes.jpg", b"plain text with a .jpg name", "image/jpeg"),
            (files[1].name, files[1].read_bytes(), "image/jpeg"),
            ("truncated.jpg", jpeg[: len(jpeg) // 3], "image/jpeg"),
            ("bomb.png", bomb_png(), "image/png"),
            ("zero.png", png_header(0, 0), "image/png"),
            ("tiny.png", image_bytes("PNG", size=(8, 8)), "image/png"),
            ("empty.jpg", b"", "image/jpeg"),
        ),
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(8)) and [r["ok"] for r in results] == [True, False, True] + [False] * 5
    assert {r["filename"] for r in results if r["ok"]} == {f.name for f in files}
    errors = {r["filename"]: r["error"] for r in results if not r["ok"]}
    assert errors["notes.jpg"] == "not an image (unrecognised content)"
    assert errors["truncated.jpg"].startswith("truncated or corrupt JPEG")
    assert errors["bomb.png"].startswith("decompression bomb: 20000x20000")
    assert errors["tiny.png"] == "image too small: 8x8, min_side is 32"
    assert errors["empty.jpg"] == "empty file (0 bytes)"
    assert errors["zero.png"] == "corrupt image header: Truncated File Read"
    ok = results[0]
    assert set(ok["probabilities"]) == set(CONFIG.classes) and ok["model_version"] == 1
    assert ok["myeloblast_alert"] == (ok["predicted_class"] == "myeloblast")


def test_client_errors_are_clear_4xx_without_stack_traces(web):
    cases = [
        (web.post("/predict"), 400, "no image in the request"),
        (web.post("/predict", files=upload(("a.txt", b"text", "text/plain"))), 422, "not an image"),
        (web.post("/predict", files=upload(*[("x.png", image_bytes("PNG"), "image/png")] * 33)), 413, "at most 32"),
        (web.post("/predict", files=upload(("big.jpg", b"\xff" * 10_000_001, "image/jpeg"))), 422, "file too large"),
    ]
    for response, status, text in cases:
        assert response.status_code == status and text in response.text, response.text
        assert "Traceback" not in response.text


def test_model_server_down_or_model_unknown_is_503(model_server):
    image = upload(("m.jpg", real_files("myeloblast", 1)[0].read_bytes(), "image/jpeg"))
    down = web_client(f"127.0.0.1:{free_port()}", retries=1)
    assert down.get("/healthz").status_code == 200
    assert down.get("/readyz").status_code == 503
    response = down.post("/predict", files=image)
    assert response.status_code == 503 and "model server unavailable" in response.json()["detail"]
    unknown = web_client(model_server.target, model="other").post("/predict", files=image)
    assert unknown.status_code == 503 and "model not loaded" in unknown.json()["detail"]
