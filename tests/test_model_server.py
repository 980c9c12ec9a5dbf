"""The local TF-Serving-compatible server, queried over a real socket with the official stubs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from contracts.precision import cpu_has_bfloat16
from contracts.signatures import SERVING_INPUT
from serving.client import ServingClient, ServingError, string_tensor
from tests.helpers import CLASSES, CONFIG, bomb_png, png_header, real_files


def raw_predict(target: str, images: list[bytes], input_key: str = SERVING_INPUT):
    """A Predict call with the official stub, no project client in between."""
    with grpc.insecure_channel(target) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = CONFIG.model_name
        request.inputs[input_key].CopyFrom(string_tensor(images))
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


def test_predict_matches_the_savedmodel_called_directly(model_server, model_exports):
    files = [real_files(c, 1)[0] for c in CLASSES]
    images = [f.read_bytes() for f in files]
    response = raw_predict(model_server.target, images)
    assert response.model_spec.version.value == 1 and response.model_spec.signature_name == "serving_default"
    direct = tf.saved_model.load(str(model_exports["random"])).signatures["serving_default"]
    expected = direct(**{SERVING_INPUT: tf.constant(images)})
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["probabilities"]), expected["probabilities"].numpy(), atol=1e-6)
    assert list(tf.make_ndarray(response.outputs["predicted_class"])) == list(expected["predicted_class"].numpy())

    with ServingClient(model_server.target, CONFIG.model_name) as client:
        predictions = client.predict(images)
    assert [p.predicted_class.encode() for p in predictions] == list(expected["predicted_class"].numpy())
    assert all(abs(sum(p.probabilities.values()) - 1) < 1e-4 and list(p.probabilities) == CLASSES for p in predictions)


def test_out_of_scope_is_answered_over_grpc_and_silences_the_alert(model_server, model_exports):
    """Version 2 calls every cell out of scope, version 3 myeloblast: over gRPC each answer says whether the
    cell is out of scope (with its probability), the five probabilities stay, the alert only for a blast."""
    (model_server.base / "2").symlink_to(model_exports["out_of_scope"], target_is_directory=True)
    model_server.manager.poll()
    images = [real_files(c, 1)[0].read_bytes() for c in ("myeloblast", "monocyte")]
    with ServingClient(model_server.target, CONFIG.model_name, version=2) as client:
        outside = client.predict(images)
    assert [(p.out_of_scope, p.alert("myeloblast"), p.answer()) for p in outside] == [(True, False, "out of scope")] * 2
    assert all(p.out_of_scope_probability > 0.99 and list(p.probabilities) == CLASSES for p in outside)
    assert all(abs(sum(p.probabilities.values()) - 1) < 1e-4 for p in outside)
    (model_server.base / "3").symlink_to(model_exports["myeloblast"], target_is_directory=True)
    model_server.manager.poll()
    with ServingClient(model_server.target, CONFIG.model_name, version=3) as client:
        inside = client.predict(images)
    assert [(p.out_of_scope, p.alert("myeloblast"), p.answer()) for p in inside] == [(False, True, "myeloblast")] * 2
    assert all(p.out_of_scope_probability < 0.01 for p in inside)


def test_status_and_metadata(model_server):
    with ServingClient(model_server.target, CONFIG.model_name) as client:
        assert [(s.version, s.state, s.error) for s in client.status()] == [(1, "AVAILABLE", "")]
        version, signatures = client.metadata()
    assert version == 1
    assert signatures["serving_default"]["inputs"] == {SERVING_INPUT: "DT_STRING"}
    assert signatures["serving_default"]["outputs"] == {
        "probabilities": "DT_FLOAT", "predicted_class": "DT_STRING", "predicted_index": "DT_INT32",
        "class_names": "DT_STRING", "myeloblast_alert": "DT_BOOL", "needs_review": "DT_BOOL",
        "out_of_scope": "DT_BOOL", "out_of_scope_probability": "DT_FLOAT",
    }  # fmt: skip
    assert signatures["explain"]["outputs"] == {
        "heatmap": "DT_FLOAT", "predicted_class": "DT_STRING", "window": "DT_FLOAT", "out_of_scope": "DT_BOOL"
    }
    assert "serving_examples" in signatures


@pytest.mark.parametrize(
    "model, version, code",
    [("no_such_model", None, grpc.StatusCode.NOT_FOUND), (CONFIG.model_name, 7, grpc.StatusCode.NOT_FOUND)],
)
def test_unknown_model_or_version_is_not_found(model_server, model, version, code):
    with ServingClient(model_server.target, model, version=version) as client:
        with pytest.raises(ServingError) as err:
            client.predict([real_files("monocyte", 1)[0].read_bytes()])
        assert err.value.code == code
        with pytest.raises(ServingError) as err:
            client.status()
        assert err.value.code == code


def test_bad_input_is_invalid_argument(model_server):
    jpeg = real_files("erythroblast", 1)[0].read_bytes()
    cases = {
        "empty": (b"", "not a JPEG or PNG image"),
        "text": (b"hello, I am text", "not a JPEG or PNG image"),
        "truncated JPEG": (jpeg[: len(jpeg) // 3], "JPEG"),
        "0x0 image": (png_header(0, 0), "image side under min_side=32"),
        "decompression bomb": (bomb_png(), f"image over max_image_pixels={CONFIG.serving.max_image_pixels}"),
    }
    for name, (data, message) in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            raw_predict(model_server.target, [jpeg, data])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert message in err.value.details(), (name, err.value.details())
    with pytest.raises(grpc.RpcError) as err:
        raw_predict(model_server.target, [jpeg], input_key="images")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image_bytes" in err.value.details()


def test_over_the_message_limit_is_resource_exhausted(model_server):
    big = [real_files("basophil", 1)[0].read_bytes()] * 300  # about 5 MB; the fixture's limit is 4 MB
    with pytest.raises(grpc.RpcError) as err:
        raw_predict(model_server.target, big)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def wait_for(condition, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.1)


def test_hot_reload_under_load_and_a_broken_version_keeps_the_old_one(model_server, model_exports):
    image = real_files("myeloblast", 1)[0].read_bytes()
    seen, failures, stop = [], [], threading.Event()

    def hammer() -> None:
        with ServingClient(model_server.target, CONFIG.model_name, retries=0) as client:
            while not stop.is_set():
                try:
                    seen.append(client.predict([image])[0])
                except ServingError as err:
                    failures.append(err)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(seen) > 20, "20 answers from version 1")
        shutil.copytree(model_exports["myeloblast"], model_server.base / "2")  # what the Pusher does
        wait_for(lambda: seen[-1].model_version == 2, "answers from version 2")
        count_at_switch = len(seen)
        wait_for(lambda: len(seen) > count_at_switch + 20, "20 more answers")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert {p.model_version for p in seen} == {1, 2}
    assert {p.predicted_class for p in seen if p.model_version == 2} == {"myeloblast"}

    with ServingClient(model_server.target, CONFIG.model_name) as client:
        assert [(s.version, s.state) for s in client.status()] == [(1, "END"), (2, "AVAILABLE")]
        (model_server.base / "3").mkdir()
        (model_server.base / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
        wait_for(lambda: any(s.version == 3 and s.state == "END" for s in client.status()), "version 3 given up")
        status = {s.version: s for s in client.status()}
        assert "failed to load" in status[3].error and status[2].state == "AVAILABLE"
        assert client.predict([image])[0].model_version == 2


BFLOAT16_PROBABILITIES = """
import json, sys
import tensorflow as tf
from contracts.signatures import SERVING_INPUT
from contracts.precision import enable_bfloat16
assert enable_bfloat16("auto")
images = [open(path, "rb").read() for path in sys.argv[2:]]
outputs = tf.saved_model.load(sys.argv[1]).signatures["serving_default"](**{SERVING_INPUT: tf.constant(images)})
print(json.dumps(outputs["probabilities"].numpy().tolist()))
"""


@pytest.mark.skipif(not cpu_has_bfloat16(), reason="this CPU has no native bfloat16: the server stays in float32")
def test_a_server_in_bfloat16_answers_as_the_float32_model_within_its_rounding(model_exports):
    """`serving.precision: auto` (the server process's graph rewrite) on real images: the probabilities of the
    float32 model within bfloat16's rounding (8 bits of mantissa), the same top class where it leads by more."""
    files = [str(f) for c in CLASSES for f in real_files(c, 2)]
    done = subprocess.run(
        [sys.executable, "-c", BFLOAT16_PROBABILITIES, str(model_exports["random"]), *files],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    in_bfloat16 = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    direct = tf.saved_model.load(str(model_exports["random"])).signatures["serving_default"]
    in_float32 = direct(**{SERVING_INPUT: tf.constant([open(f, "rb").read() for f in files])})["probabilities"].numpy()
    np.testing.assert_allclose(in_bfloat16, in_float32, atol=0.01)
    top_two = np.sort(in_float32, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > 0.02
    assert (in_bfloat16.argmax(axis=1) == in_float32.argmax(axis=1))[clear].all()
