"""Pusher whose push is atomic: TF Serving sees a new version whole or not at all, and two runs never
share a version folder.

TFX's Pusher copies the model file by file into `<base>/<unix time>/` (a server polling meanwhile may load
a half-copied version) and, when that folder exists, skips the copy yet records the push as its own. Here
the model is copied into a staging folder TF Serving ignores (its name is not a number) and renamed into
place; a version already taken moves the new one to the next free number.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any

import tensorflow as tf
from tfx import types
from tfx.components import Pusher
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from contracts.artifacts import served_versions

STAGING_PREFIX = ".staging-"


def publish(model_dir: str, base_dir: str, attempts: int = 100) -> tuple[int, str]:
    """Copies the SavedModel in `model_dir` to `<base_dir>/<version>` atomically (copy to a staging folder,
    then one rename). The version is the Unix time, or one more than the newest present. Returns
    (version, path)."""
    tf.io.gfile.makedirs(base_dir)
    staging = os.path.join(base_dir, f"{STAGING_PREFIX}{uuid.uuid4().hex}")
    try:
        io_utils.copy_dir(model_dir, staging)
        version = max([int(time.time()), *(v + 1 for v in served_versions(base_dir))])
        for _ in range(attempts):
            target = os.path.join(base_dir, str(version))
            try:
                tf.io.gfile.rename(staging, target, overwrite=False)
                return version, target
            except (tf.errors.AlreadyExistsError, tf.errors.FailedPreconditionError):
                version += 1  # another push took this version between our look and our rename
        raise RuntimeError(f"no free version under {base_dir} after {attempts} attempts")
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)


class AtomicPushExecutor(pusher_executor.Executor):
    """TFX's Pusher executor with an atomic filesystem push (`publish`)."""

    def Do(  # noqa: N802 - TFX executor interface
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem":
            raise NotImplementedError(f"push destination {destination.WhichOneof('destination')}: only filesystem is supported")
        model_path = self.GetModelPath(input_dict)
        version, serving_path = publish(model_path, destination.filesystem.base_directory)
        logging.info("Pusher: model published atomically as version %d at %s", version, serving_path)
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=str(version))


class AtomicPusher(Pusher):
    """tfx.components.Pusher with AtomicPushExecutor."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPushExecutor)
