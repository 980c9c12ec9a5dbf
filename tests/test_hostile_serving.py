"""Hostile input to the served model, the local gRPC server and the web endpoint: each is refused with a
clear status before it costs memory, and good requests beside it are answered."""

from __future__ import annotations

import dataclasses
import io
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from contracts.signatures import SERVING_INPUT
from serving.client import MB, ServingClient, string_tensor
from serving.model_server import start_server
from serving.screening import RequestCaps, batches
from serving.web_app import create_app, upload_limits
from tests.helpers import CONFIG, image_bytes, real_files
from tests.helpers.faults import endless_upload, solid_png

CAPS = CONFIG.serving


def predict(target: str, images: list[bytes], timeout: float = 60.0, signature: str = "serving_default", tensor=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = CONFIG.model_name
    request.model_spec.signature_name = signature
    request.inputs[SERVING_INPUT].CopyFrom(tensor if tensor is not None else string_tensor(images))
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 * MB)]) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)


def refused(target: str, images: list[bytes], **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        predict(target, images, **kwargs)
    return err.value


GOOD = real_files("myeloblast", 1)[0].read_bytes()


def test_a_batch_over_max_request_images_is_refused_before_decoding(model_server):
    err = refused(model_server.target, [GOOD] * (CAPS.max_request_images + 1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"max_request_images={CAPS.max_request_images}" in err.details()


def test_a_40_megapixel_solid_png_is_refused_from_its_header(model_server):
    started = time.monotonic()
    err = refused(model_server.target, [GOOD, solid_png(8000, 5000)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_image_pixels" in err.details()
    assert time.monotonic() - started < 10  # a decoded 40 Mpx image would take far longer on this CPU


def test_images_over_max_request_pixels_together_are_refused(model_server):
    side = int((CAPS.max_image_pixels - 1) ** 0.5)
    count = CAPS.max_request_pixels // (side * side) + 1
    err = refused(model_server.target, [solid_png(side, side)] * count)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_request_pixels" in err.details()


def test_a_truncated_file_is_invalid_argument(model_server):
    err = refused(model_server.target, [GOOD[: len(GOOD) // 2]])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_float_tensor_where_image_bytes_belong_is_invalid_argument(model_server):
    from tensorflow import make_tensor_proto

    err = refused(model_server.target, [], tensor=make_tensor_proto(np.zeros((1, 96, 96, 3), np.float32)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "dtype" in err.details()


def test_an_unknown_signature_is_invalid_argument(model_server):
    err = refused(model_server.target, [GOOD], signature="__saved_model_init_op")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_request_whose_deadline_has_passed_is_not_computed(model_server):
    err = refused(model_server.target, [GOOD] * 32, timeout=0.001)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.fixture
def busy_server(tmp_path, model_exports):
    """A server with one compute slot and one queue place."""
    base = tmp_path / "models" / CONFIG.model_name
    shutil.copytree(model_exports["random"], base / "1")
    running = start_server(CONFIG.model_name, base, port=0, max_concurrent_predictions=1, max_queued_requests=1)
    yield f"127.0.0.1:{running.port}"
    running.stop()


def test_a_flood_past_the_queue_gets_resource_exhausted_and_the_admitted_requests_succeed(busy_server):
    codes, lock = [], threading.Lock()

    def call() -> None:
        try:
            predict(busy_server, [GOOD] * 48)
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()
            assert code != grpc.StatusCode.RESOURCE_EXHAUSTED or "server busy" in err.details()
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1
    assert codes.count(grpc.StatusCode.OK) >= 2 and set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


def web_for(target: str, caps: RequestCaps | None = None) -> TestClient:
    limits = upload_limits(CONFIG)
    if caps is not None:
        limits = dataclasses.replace(limits, caps=caps)
    app = create_app(ServingClient(target, CONFIG.model_name), CONFIG.critical_class, limits)
    return TestClient(app, raise_server_exceptions=False)


def test_an_upload_over_the_body_limit_is_refused_by_its_length_before_it_is_read(model_server):
    web = web_for(model_server.target)
    limit = upload_limits(CONFIG).max_body_bytes
    response = web.post(
        "/predict",
        content=b"x" * 1024,
        headers={"Content-Length": str(limit + 1), "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 413 and "at most" in response.json()["detail"]


def test_a_chunked_upload_is_cut_off_when_it_passes_the_limit(model_server):
    web = web_for(model_server.target)
    limit = upload_limits(CONFIG).max_body_bytes
    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    response = web.post("/predict", content=endless_upload(2 * limit), headers=multipart)
    assert response.status_code == 413 and f"at most {limit}" in response.json()["detail"]


def test_a_large_valid_request_is_split_not_refused(model_server):
    """The fixture's server takes 4 MB messages; 12 images of about 0.5 MB go in several requests."""
    rng = np.random.default_rng(0)
    noisy = []
    for _ in range(12):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(buffer, format="PNG")
        noisy.append(buffer.getvalue())
    assert sum(map(len, noisy)) > 4 * MB
    caps = RequestCaps(images=32, bytes=4 * MB - MB, pixels=CAPS.max_request_pixels)
    assert len(batches([(len(b), 400 * 400) for b in noisy], caps)) > 1
    response = web_for(model_server.target, caps).post(
        "/predict", files=[("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(noisy)]
    )
    assert response.status_code == 200 and all(r["ok"] for r in response.json()["results"])


def test_a_40_megapixel_upload_is_refused_per_file_and_the_good_one_answered(model_server):
    files = [("files", ("bomb.png", solid_png(8000, 5000), "image/png")), ("files", ("cell.jpg", GOOD, "image/jpeg"))]
    results = web_for(model_server.target).post("/predict", files=files).json()["results"]
    assert results[0]["ok"] is False and results[0]["error"].startswith("decompression bomb")
    assert results[1]["ok"] is True


def test_explain_converts_bmp_and_rgba_like_predict_and_caps_the_overlay(model_server):
    web = web_for(model_server.target)
    with Image.open(io.BytesIO(GOOD)) as cell:
        big = cell.resize((1800, 1800))
        bmp, rgba = io.BytesIO(), io.BytesIO()
        big.save(bmp, format="BMP")
        cell.convert("RGBA").save(rgba, format="PNG")
    for name, data in (("big.bmp", bmp.getvalue()), ("alpha.png", rgba.getvalue())):
        explained = web.post("/explain", files={"file": (name, data, "application/octet-stream")})
        assert explained.status_code == 200, (name, explained.text)
        predicted = web.post("/predict", files=[("files", (name, data, "application/octet-stream"))]).json()["results"][0]
        assert explained.headers["X-Predicted-Class"] == predicted["predicted_class"], name
        assert max(Image.open(io.BytesIO(explained.content)).size) <= 1024


def test_truncated_and_non_image_uploads_are_named_per_file(model_server):
    files = [("files", ("cut.jpg", GOOD[:2000], "image/jpeg")), ("files", ("x.exe", b"MZ\x90\x00", "application/octet-stream"))]
    response = web_for(model_server.target).post("/predict", files=files)
    assert response.status_code == 422
    errors = [r["error"] for r in response.json()["results"]]
    assert errors[0].startswith("truncated or corrupt JPEG") and errors[1].startswith("not an image")


def test_a_busy_model_server_is_503_with_retry_after(busy_server):
    web = web_for(busy_server)
    statuses, lock = [], threading.Lock()

    def call() -> None:
        response = web.post("/predict", files=[("files", (f"{i}.jpg", GOOD, "image/jpeg")) for i in range(32)])
        with lock:
            statuses.append((response.status_code, response.headers.get("Retry-After")))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (503, "1") in statuses and (200, None) in statuses
    assert {s for s, _ in statuses} <= {200, 503}


def test_an_image_under_min_side_is_invalid_argument(model_server):
    err = refused(model_server.target, [image_bytes("PNG", size=(8, 8))])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "min_side" in err.details()


def test_batches_are_cut_at_each_cap_and_keep_every_item_once():
    caps = RequestCaps(images=3, bytes=100, pixels=1000)
    sizes = [(10, 100)] * 4 + [(60, 100), (60, 100)] + [(1, 600), (1, 600)] + [(500, 10)]
    cut = batches(sizes, caps)
    assert cut == [[0, 1, 2], [3, 4], [5, 6], [7], [8]]  # cut by count, bytes, pixels, and one alone over the bytes
    assert sorted(i for b in cut for i in b) == list(range(len(sizes)))
