"""A local model server that speaks TensorFlow Serving's gRPC API, for machines without the
`tensorflow_model_server` binary or Docker (development and tests). Production uses the official
`tensorflow/serving` image (k8s/); clients work unchanged against both.

Semantics follow TF Serving: the highest numeric version under the base path is served; the base path
is polled; a new version is loaded before the old one is unloaded; a version that fails to load is
retried a few times and the old one keeps serving; TF Serving's status codes are returned.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from concurrent import futures
from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from contracts.artifacts import served_versions
from contracts.precision import enable_bfloat16
from contracts.signatures import SERVING_SIGNATURE
from contracts.site_models import read_model_server_config

log = logging.getLogger(__name__)
MB = 1024 * 1024
State = get_model_status_pb2.ModelVersionStatus.State


class RequestError(Exception):
    """A request that fails with a gRPC status code, as TF Serving would answer it."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class LoadedVersion:
    version: int
    model: object  # the object tf.saved_model.load returns
    signature_defs: dict  # name -> SignatureDef proto, as TF Serving reports them


@dataclasses.dataclass
class VersionState:
    state: int
    error: str = ""
    failures: int = 0


def _read_signature_defs(path: Path) -> dict:
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    defs = saved_model.meta_graphs[0].signature_def
    return {name: defs[name] for name in defs if not name.startswith("__")}


class VersionManager:
    """Keeps the highest loadable version of one model under `base_path` loaded (`poll`)."""

    def __init__(self, model_name: str, base_path: str | Path, max_load_retries: int = 5):
        self.model_name, self.base_path = model_name, Path(base_path)
        self.max_load_retries = max_load_retries
        self._lock = threading.Lock()
        self._serving: LoadedVersion | None = None
        self._states: dict[int, VersionState] = {}
        self._said_empty = False

    def poll(self) -> None:
        """Loads the highest version on disk if it is not the one being served (one attempt)."""
        versions = served_versions(str(self.base_path))
        if not versions:
            if not self._said_empty:  # said once, not at every poll
                log.warning("no versions of model %s found under %s", self.model_name, self.base_path)
            self._said_empty = True
            return
        self._said_empty = False
        wanted = versions[-1]
        current = self._serving
        state = self._states.setdefault(wanted, VersionState(State.START))
        if (current and current.version == wanted) or state.failures >= self.max_load_retries:
            return
        state.state = State.LOADING
        path = self.base_path / str(wanted)
        try:
            loaded = LoadedVersion(wanted, tf.saved_model.load(str(path)), _read_signature_defs(path))
        except Exception as err:  # any load failure keeps the old version serving
            state.failures += 1
            state.error = f"failed to load {path}: {str(err).splitlines()[0]}"
            if state.failures >= self.max_load_retries:
                state.state = State.END
                log.error("giving up on version %d after %d attempts: %s", wanted, state.failures, state.error)
            else:
                log.warning("version %d: %s (attempt %d, will retry)", wanted, state.error, state.failures)
            return
        with self._lock:
            self._serving = loaded
            state.state, state.error = State.AVAILABLE, ""
            if current is not None:
                self._states[current.version].state = State.END
        log.info("serving %s version %d from %s", self.model_name, wanted, path)

    def get(self, model_spec) -> LoadedVersion:
        """The loaded version a request's ModelSpec asks for (its name routed here by ServedModels), or NOT_FOUND
        as TF Serving answers."""
        if model_spec.version_label:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND, f"Unrecognized servable version label: {model_spec.version_label}"
            )
        serving = self._serving
        if model_spec.HasField("version"):
            if serving is None or serving.version != model_spec.version.value:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: Specific({self.model_name}, {model_spec.version.value})",
                )
        elif serving is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({self.model_name})")
        return serving

    def statuses(self, model_spec) -> list[get_model_status_pb2.ModelVersionStatus]:
        with self._lock:
            states = dict(self._states)
        if model_spec.HasField("version"):
            wanted = model_spec.version.value
            if wanted not in states:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND, f"Could not find version {wanted} of model {self.model_name}"
                )
            states = {wanted: states[wanted]}
        result = []
        for version, state in sorted(states.items()):
            status = get_model_status_pb2.ModelVersionStatus(version=version, state=state.state)
            if state.error:
                status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                status.status.error_message = state.error
            result.append(status)
        return result


class ServedModels:
    """The models a server serves, each with its VersionManager: one model at a base path, or those a
    ModelServerConfig file lists (TF Serving's --model_config_file; until the file exists, the one model), the
    file re-read at every poll, as with --model_config_file_poll_wait_seconds: a model added to it is loaded,
    one taken out is unloaded."""

    def __init__(self, models: dict[str, Path], config_file: Path | None = None, poll_wait_s: float = 1.0):
        self.fixed, self.config_file, self.poll_wait_s = models, config_file, poll_wait_s
        self._managers: dict[str, VersionManager] = {}
        self._config_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _wanted(self) -> dict[str, Path]:
        if self.config_file is None or not self.config_file.exists():  # until it is written: the base model
            return self.fixed
        try:
            listed = {name: Path(path) for name, path in read_model_server_config(str(self.config_file)).items()}
        except (OSError, ValueError, tf.errors.OpError) as err:
            if str(err) != self._config_error:  # said once, not at every poll
                log.error("model config %s unreadable, keeping the models served: %s", self.config_file, err)
            self._config_error = str(err)
            return {name: manager.base_path for name, manager in self._managers.items()}
        self._config_error = ""
        return listed

    def poll(self) -> None:
        """Follows the model config, then polls every model's base path for its highest version."""
        wanted = self._wanted()
        managers = dict(self._managers)
        for name in sorted(set(managers) - set(wanted)):
            log.info("model %s is no longer in %s: unloaded", name, self.config_file)
            del managers[name]
        for name, path in wanted.items():
            if name not in managers or managers[name].base_path != path:
                managers[name] = VersionManager(name, path)
        self._managers = managers
        for manager in managers.values():
            manager.poll()

    def manager(self, name: str) -> VersionManager:
        """The model a request names, or NOT_FOUND as TF Serving answers."""
        managers = self._managers
        if name not in managers:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")
        return managers[name]

    def start(self) -> None:
        """Loads what is on disk now, then keeps polling in a background thread."""
        self.poll()

        def loop() -> None:
            while not self._stop.wait(self.poll_wait_s):
                self.poll()

        self._thread = threading.Thread(target=loop, name="version-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


def _op_error_message(err: tf.errors.OpError) -> str:
    """The useful sentence of a TensorFlow error (graph errors wrap it in node traces)."""
    assertion = re.search(r"assertion failed: \[([^\]]*)\]", err.message)
    if assertion:
        return assertion.group(1)
    lines = [line.strip() for line in err.message.splitlines() if line.strip()]
    noise = ("Graph execution error", "Detected at node", "File ", "[[", "<stack traces")
    useful = [line for line in lines if not line.startswith(noise)]
    return re.sub(r"\s*\[\[.*$", "", (useful or lines or ["TensorFlow error"])[0])


def _run_signature(loaded: LoadedVersion, request: predict_pb2.PredictRequest) -> dict[str, tf.Tensor]:
    name = request.model_spec.signature_name or SERVING_SIGNATURE
    if name not in loaded.signature_defs:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f'Serving signature key "{name}" not found.')
    signature_def = loaded.signature_defs[name]
    expected, given = set(signature_def.inputs), set(request.inputs)
    if expected != given:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input keys {sorted(given)} do not match the signature's inputs {sorted(expected)}",
        )
    unknown_outputs = set(request.output_filter) - set(signature_def.outputs)
    if unknown_outputs:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"output_filter names unknown outputs {sorted(unknown_outputs)}")
    inputs = {}
    for key, proto in request.inputs.items():
        if proto.dtype != signature_def.inputs[key].dtype:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"input {key!r}: wrong dtype {proto.dtype}")
        inputs[key] = tf.constant(tf.make_ndarray(proto))
    try:
        outputs = loaded.model.signatures[name](**inputs)
    except tf.errors.OpError as err:
        code = next((c for c in grpc.StatusCode if c.value[0] == err.error_code), grpc.StatusCode.UNKNOWN)
        raise RequestError(code, _op_error_message(err)) from None
    wanted = set(request.output_filter) or set(outputs)
    return {k: v for k, v in outputs.items() if k in wanted}


class ComputeSlots:
    """At most `concurrent` predictions compute at once and at most `queued` wait for a slot: a request
    beyond that is refused at once (RESOURCE_EXHAUSTED), and one whose deadline passes while waiting is
    dropped (DEADLINE_EXCEEDED) instead of being computed for nobody."""

    def __init__(self, concurrent: int, queued: int):
        self._slots = threading.Semaphore(concurrent)
        self._lock = threading.Lock()
        self.waiting, self.queued = 0, queued

    def acquire(self, time_remaining: float | None) -> None:
        if time_remaining is not None and time_remaining <= 0:
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the request was computed")
        with self._lock:
            if self.waiting >= self.queued:
                raise RequestError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server busy: {self.waiting} requests already wait for the model; retry with backoff",
                )
            self.waiting += 1
        try:
            if not self._slots.acquire(timeout=time_remaining):
                raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while the request waited for the model")
        finally:
            with self._lock:
                self.waiting -= 1

    def release(self) -> None:
        self._slots.release()


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, models: ServedModels, slots: ComputeSlots):
        self.models, self.slots = models, slots

    def Predict(self, request, context):  # noqa: N802 (gRPC method name)
        try:
            manager = self.models.manager(request.model_spec.name)
            loaded = manager.get(request.model_spec)
            self.slots.acquire(context.time_remaining())
            try:
                outputs = _run_signature(loaded, request)
            finally:
                self.slots.release()
        except RequestError as err:
            context.abort(err.code, str(err))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = manager.model_name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = request.model_spec.signature_name or SERVING_SIGNATURE
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
        try:
            manager = self.models.manager(request.model_spec.name)
            loaded = manager.get(request.model_spec)
            if list(request.metadata_field) != ["signature_def"]:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "Metadata field signature_def is the only one supported")
        except RequestError as err:
            context.abort(err.code, str(err))
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in loaded.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = manager.model_name
        response.model_spec.version.value = loaded.version
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, models: ServedModels):
        self.models = models

    def GetModelStatus(self, request, context):  # noqa: N802
        try:
            name = request.model_spec.name
            try:
                manager = self.models.manager(name)
            except RequestError:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}") from None
            statuses = manager.statuses(request.model_spec)
        except RequestError as err:
            context.abort(err.code, str(err))
        return get_model_status_pb2.GetModelStatusResponse(model_version_status=statuses)


@dataclasses.dataclass
class RunningServer:
    server: grpc.Server
    models: ServedModels
    model_name: str
    port: int

    @property
    def manager(self) -> VersionManager:
        """The model served by the name given to `start_server`."""
        return self.models.manager(self.model_name)

    def stop(self) -> None:
        self.models.stop()
        self.server.stop(grace=2).wait()


def start_server(
    model_name: str,
    model_base_path: str | Path,
    port: int = 8500,
    host: str = "127.0.0.1",
    poll_wait_s: float = 1.0,
    max_message_mb: int = 64,
    max_concurrent_predictions: int = 4,
    max_queued_requests: int = 64,
    model_config_file: str | Path | None = None,
    precision: str = "float32",
) -> RunningServer:
    """Loads the model, then serves TF Serving's PredictionService and ModelService on host:port
    (port 0 picks a free port). Returns at once; call `.stop()` to shut down.

    At most `max_concurrent_predictions` requests compute at once (memory stays bounded), at most
    `max_queued_requests` wait; more are refused with RESOURCE_EXHAUSTED. With `model_config_file` (a
    ModelServerConfig: the base model and its site-adapted models, contracts.site_models) the models are those it
    lists, followed as it changes; `model_name` is then the one `.manager` returns. `precision`:
    `contracts.precision.enable_bfloat16`, before any model is loaded."""
    computing = "bfloat16 (oneDNN)" if enable_bfloat16(precision) else "float32"
    workers = max_concurrent_predictions + max_queued_requests + 4  # the rest answer status calls and refusals
    config_file = Path(model_config_file) if model_config_file else None
    models = ServedModels({model_name: Path(model_base_path)}, config_file, poll_wait_s)
    models.start()
    options = [
        ("grpc.max_receive_message_length", max_message_mb * MB),
        ("grpc.max_send_message_length", max_message_mb * MB),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers), options=options, maximum_concurrent_rpcs=2 * workers
    )  # beyond that gRPC itself answers RESOURCE_EXHAUSTED before a thread is taken
    slots = ComputeSlots(max_concurrent_predictions, max_queued_requests)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(models, slots), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(models), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    served = f"the models of {config_file}" if config_file else f"model {model_name} (base path {model_base_path})"
    log.info("TF Serving gRPC API for %s on %s:%d, computing in %s", served, host, bound, computing)
    return RunningServer(server, models, model_name, bound)
