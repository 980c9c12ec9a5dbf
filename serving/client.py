"""A gRPC client for TensorFlow Serving's official API (works unchanged against `tensorflow/serving` and
`bloodcell serve`): Predict on encoded image bytes, model status and metadata."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Collection, Sequence

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from contracts.signatures import (
    CLASS_NAMES,
    EXPLAIN_SIGNATURE,
    HEATMAP,
    NEEDS_REVIEW,
    OUT_OF_SCOPE,
    OUT_OF_SCOPE_PROBABILITY,
    PREDICTED_CLASS,
    PROBABILITIES,
    SERVING_INPUT,
    SERVING_SIGNATURE,
    WINDOW,
    Explanation,
    alert_output,
    site_model_name,
)

MB = 1024 * 1024


class ServingError(RuntimeError):
    """A failed call to TF Serving, with the gRPC status code and a readable message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.details = message


@dataclasses.dataclass(frozen=True)
class Prediction:
    predicted_class: str
    probabilities: dict[str, float]
    model_version: int
    flags: dict[str, bool] = dataclasses.field(default_factory=dict)  # the model's boolean outputs
    out_of_scope_probability: float = 0.0  # calibrated (0 for models without the output)
    model_name: str = ""  # the served model that answered: the base model, or a site's adapted model

    def alert(self, critical_class: str) -> bool:
        """The model's `<critical_class>_alert` output (its calibrated operating point); for models exported
        before it existed, whether the critical class is the predicted class."""
        return self.flags.get(alert_output(critical_class), self.predicted_class == critical_class)

    @property
    def needs_review(self) -> bool:
        """Low confidence: a person should look at this image (False for models without the output)."""
        return self.flags.get(NEEDS_REVIEW, False)

    @property
    def out_of_scope(self) -> bool:
        """The cell is none of the classes (`probabilities` are then of the classes given that it were one;
        no alert is raised for it). False for models without the output."""
        return self.flags.get(OUT_OF_SCOPE, False)

    def answer(self) -> str:
        """What to show: `out of scope`, or the predicted class."""
        return "out of scope" if self.out_of_scope else self.predicted_class


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    error: str  # "" when the version's status is OK


def string_tensor(values: Sequence[bytes]) -> tensor_pb2.TensorProto:
    """A 1-D DT_STRING TensorProto (built without importing TensorFlow's runtime helpers)."""
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))])
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=list(values))


def require_window(output_names: Collection[str]) -> None:
    """Raises FAILED_PRECONDITION for a model exported before its explain signature said where the CNN looked."""
    if WINDOW not in output_names:
        raise ServingError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"the model's {EXPLAIN_SIGNATURE} signature has no {WINDOW!r} output (exported by an older version): "
            "run the pipeline to push a current model",
        )


def _floats(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    """A DT_FLOAT TensorProto's values, flat (they may come packed in tensor_content)."""
    return np.frombuffer(tensor.tensor_content, "<f4") if tensor.tensor_content else np.array(tensor.float_val, np.float32)


def _rows(tensor: tensor_pb2.TensorProto) -> list[list]:
    """A 2-D float or string TensorProto as rows of Python values."""
    dims = [d.size for d in tensor.tensor_shape.dim]
    if tensor.dtype == types_pb2.DT_FLOAT:
        values = _floats(tensor).tolist()
    else:
        values = [v.decode() for v in tensor.string_val]
    return [values[i * dims[1] : (i + 1) * dims[1]] for i in range(dims[0])]


def _channel_options(max_message_mb: int, retries: int) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", max_message_mb * MB),
        ("grpc.max_receive_message_length", max_message_mb * MB),
        ("grpc.enable_retries", 1 if retries else 0),
    ]
    if retries:
        retry_policy = {
            "maxAttempts": retries + 1,
            "initialBackoff": "0.2s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        services = [{"service": "tensorflow.serving.PredictionService"}, {"service": "tensorflow.serving.ModelService"}]
        options.append(("grpc.service_config", json.dumps({"methodConfig": [{"name": services, "retryPolicy": retry_policy}]})))
    return options


class ServingClient:
    """Talks to one model on a TF Serving gRPC endpoint (`host:port`). With `site`, predictions and explanations
    ask that site's adapted model (`<model>-site-<site>`, contracts.site_models) and, where the server has none,
    the base model; each answer says which model it came from."""

    def __init__(
        self,
        target: str,
        model_name: str,
        version: int | None = None,
        timeout_s: float = 30.0,
        retries: int = 3,
        max_message_mb: int = 64,
        tls: bool = False,
        root_certificates: bytes | None = None,
        site: str | None = None,
    ):
        self.target, self.model_name, self.version, self.timeout_s = target, model_name, version, timeout_s
        self.site_model = site_model_name(model_name, site) if site else None
        options = _channel_options(max_message_mb, retries)
        if tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def for_site(self, site: str | None) -> ServingClient:
        """This client, on the same channel, asking `site`'s adapted model where the server has one (None: the
        base model). Close only the client the channel was opened by."""
        other = copy.copy(self)
        other.site_model = site_model_name(self.model_name, site) if site else None
        return other

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spec(self, spec, signature: str | None = SERVING_SIGNATURE, name: str | None = None) -> None:
        spec.name = name or self.model_name
        if self.version is not None and not name:
            spec.version.value = self.version
        if signature:
            spec.signature_name = signature

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
            if code == grpc.StatusCode.UNAVAILABLE:
                details = f"TF Serving at {self.target} is unreachable ({details})"
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                details = f"no answer from TF Serving at {self.target} within {self.timeout_s:g} s"
            raise ServingError(code, details) from None

    def _predict(self, request: predict_pb2.PredictRequest, signature: str) -> predict_pb2.PredictResponse:
        """Predict on the site's adapted model where the server has one, else on the base model."""
        if self.site_model:
            self._spec(request.model_spec, signature, self.site_model)
            try:
                return self._call(self.predictions.Predict, request)
            except ServingError as err:
                if err.code != grpc.StatusCode.NOT_FOUND:
                    raise
            request.model_spec.Clear()
        self._spec(request.model_spec, signature)
        return self._call(self.predictions.Predict, request)

    def predict(self, images: Sequence[bytes]) -> list[Prediction]:
        """One Predict call on `serving_default` for a batch of encoded images."""
        request = predict_pb2.PredictRequest()
        request.inputs[SERVING_INPUT].CopyFrom(string_tensor(images))
        response = self._predict(request, SERVING_SIGNATURE)
        names = _rows(response.outputs[CLASS_NAMES])
        probabilities = _rows(response.outputs[PROBABILITIES])
        predicted = [v.decode() for v in response.outputs[PREDICTED_CLASS].string_val]
        flags = {k: list(t.bool_val) for k, t in response.outputs.items() if t.dtype == types_pb2.DT_BOOL}
        has_outside = OUT_OF_SCOPE_PROBABILITY in response.outputs
        outside = _floats(response.outputs[OUT_OF_SCOPE_PROBABILITY]).tolist() if has_outside else []
        version = response.model_spec.version.value
        return [
            Prediction(
                cls,
                {n: round(p, 6) for n, p in zip(row_names, row, strict=False)},
                version,
                {k: bool(v[i]) for k, v in flags.items()},
                round(float(outside[i]), 6) if outside else 0.0,
                response.model_spec.name,
            )
            for i, (cls, row_names, row) in enumerate(zip(predicted, names, probabilities, strict=False))
        ]

    def explain(self, image: bytes) -> Explanation:
        """The `explain` signature for one encoded image: its Grad-CAM map and where the CNN looked."""
        request = predict_pb2.PredictRequest()
        request.inputs[SERVING_INPUT].CopyFrom(string_tensor([image]))
        response = self._predict(request, EXPLAIN_SIGNATURE)
        heatmap = response.outputs[HEATMAP]
        dims = [d.size for d in heatmap.tensor_shape.dim]
        require_window(response.outputs)
        window = tuple(float(v) for v in _floats(response.outputs[WINDOW]))
        heat = _floats(heatmap).reshape(dims[1:])
        outside = OUT_OF_SCOPE in response.outputs and bool(response.outputs[OUT_OF_SCOPE].bool_val[0])
        predicted = response.outputs[PREDICTED_CLASS].string_val[0].decode()
        return Explanation(predicted, heat, window, outside, response.model_spec.name)

    def status(self) -> list[VersionStatus]:
        """ModelService.GetModelStatus: every version TF Serving knows of, with its state."""
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, signature=None)
        response = self._call(self.models.GetModelStatus, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        return [
            VersionStatus(s.version, states.Name(s.state), s.status.error_message)
            for s in response.model_version_status
        ]

    def metadata(self) -> tuple[int, dict[str, dict[str, dict[str, str]]]]:
        """PredictionService.GetModelMetadata: (version, {signature: {"inputs"|"outputs": {name: dtype}}})."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, signature=None)
        response = self._call(self.predictions.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        signatures = {
            name: {
                side: {k: types_pb2.DataType.Name(v.dtype) for k, v in getattr(sig, side).items()}
                for side in ("inputs", "outputs")
            }
            for name, sig in sorted(signature_map.signature_def.items())
        }
        return response.model_spec.version.value, signatures
