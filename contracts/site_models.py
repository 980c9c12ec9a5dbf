"""Site-adapted models beside the base model: their names, where their versions live, the record each version
carries, and the TF Serving model config that lists them all.

A site's adapted model is a model of its own in TF Serving, named `<model>-site-<site>` with its own numbered
versions under `<serving_root>/<model>-site-<site>/`: a request names the model of its site, and the base
model's versions, pushes and answers stay what they are. `<serving_root>/models.config` (a ModelServerConfig,
for `tensorflow_model_server --model_config_file` and `bloodcell serve`) lists the base model and every site
that has a version."""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from contracts.artifacts import served_versions
from contracts.signatures import site_model_name, site_of_model

MODEL_CONFIG_FILE = "models.config"
ROLLED_BACK_FOLDER = ".rolled-back"  # versions taken back, kept for the record: <serving_root>/.rolled-back/<name>/<v>


def model_base_path(serving_root: str, served_name: str) -> str:
    return os.path.join(serving_root, served_name)


def adapted_sites(serving_root: str, model_name: str) -> dict[str, list[int]]:
    """Every site with an adapted model under `serving_root`: its versions, ascending (none: rolled back)."""
    if not tf.io.gfile.isdir(serving_root):
        return {}
    sites = {}
    for entry in sorted(tf.io.gfile.listdir(serving_root)):
        site = site_of_model(model_name, entry.rstrip("/"))
        if site is not None:
            sites[site] = served_versions(model_base_path(serving_root, entry.rstrip("/")))
    return sites


@dataclasses.dataclass(frozen=True)
class AdaptationRecord:
    """What one version of a site's adapted model is, beside it in assets.extra/adaptation.json."""

    site: str
    version: int
    base_model: str  # the exported base model it was adapted from
    base_version: int | None  # that model's served version, when it came from a serving root
    method: str  # adabn, balanced_adabn or tent
    blocks: int  # batch-norm blocks adapted, first first
    images_used: int
    images_rejected: dict[str, str]  # file -> reason
    duplicates: int  # files with the bytes of another, used once
    drift: list[float]  # per batch-norm layer, `training.site_adaptation.drift` of the site under the base model
    critical_share_base: float  # share of the site's images that raise the alert, base model
    critical_share_adapted: float  # ... adapted model
    confident_alerts: int  # the site's images whose alert the base model raises with confidence (confident_alert)
    confident_alerts_kept: int  # ... that the adapted model raises too
    created: str  # ISO 8601, UTC

    @property
    def drift_summary(self) -> float:
        """The mean over the layers: what adaptation.max_drift bounds."""
        return sum(self.drift) / len(self.drift) if self.drift else 0.0


def model_server_config(serving_root: str, model_name: str) -> str:
    """The ModelServerConfig (text format) of the base model and every site with a version, their base paths
    under `serving_root` (on Kubernetes, TF Serving mounts the models volume where the pipeline pods do)."""
    names = [model_name] + [site_model_name(model_name, s) for s, v in adapted_sites(serving_root, model_name).items() if v]
    config = model_server_config_pb2.ModelServerConfig()
    for name in names:
        entry = config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = name, model_base_path(serving_root, name), "tensorflow"
    return text_format.MessageToString(config)


def write_model_server_config(serving_root: str, model_name: str) -> str:
    """Writes `<serving_root>/models.config` (atomically: a polling server never reads half a file); its path."""
    path = os.path.join(serving_root, MODEL_CONFIG_FILE)
    tf.io.gfile.makedirs(serving_root)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(model_server_config(serving_root, model_name))
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
    return path


def read_model_server_config(path: str) -> dict[str, str]:
    """The models a ModelServerConfig file lists: name -> base path. ValueError names what is wrong."""
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise ValueError(f"{path}: not a ModelServerConfig: {err}") from None
    return {entry.name: entry.base_path for entry in config.model_config_list.config}
