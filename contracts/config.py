"""All settings in one place: the typed shape of `config.yaml`, loaded with command-line overrides.

Every layer reads the `Config` (or one of its sections); only `load_config` reads YAML."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from contracts.data_roots import DataRoot, DataRootError, check_roots, parse_data_root
from contracts.signatures import SiteNameError, check_site_name

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "config.yaml"


@dataclasses.dataclass(frozen=True)
class Paths:
    data_roots: list[DataRoot]      # each <path>/<class>/**, with the site of images MANIFEST.csv does not name
    output_root: str
    serving_root: str
    schema_dir: str


@dataclasses.dataclass(frozen=True)
class Ingestion:
    split_ratios: dict[str, float]
    split_seed: int
    max_pixels: int
    min_side: int
    max_file_bytes: int


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    image_size: int
    central_crop: float
    cell_window: float              # > 0: the model sees a square of this many nucleus radii around the cell
    test_time_views: int            # served probabilities: mean over this many rotations/mirror images (1..8)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    enabled: bool
    rotation: float
    zoom: float
    shift: float
    horizontal_flip: bool
    vertical_flip: bool
    brightness: float
    contrast: float
    saturation: float
    hue: float
    grayscale: float
    stain: float                    # haematoxylin/eosin amounts scaled by 1 +- this (per image and stain)
    gamma: float                    # per-channel gamma curve exp(+- this): non-linear colour, scanner response
    blur: float                     # per image: Gaussian blur of random sigma up to this, in input pixels
    sharpen: float                  # per image, half of the time instead of the blur: unsharp mask up to this amount
    jpeg_quality: list[int]         # per image: JPEG re-encoding at a random quality in [lo, hi]; [] = off
    colour_transfer: float          # probability an image takes on another batch image's colour histogram
    random_convolution: float       # probability an image is mixed with itself through a random convolution
    magnification_swap: float       # probability an image is shown at another site's magnification
    site_magnification: dict[str, float]  # each site's magnification in the model input, relative to the others


@dataclasses.dataclass(frozen=True)
class Training:
    filters: list[int]
    dense_units: int
    dropout: float
    learning_rate: float
    batch_size: int
    epochs: int
    early_stopping_patience: int
    reduce_lr_patience: int
    reduce_lr_factor: float
    grayscale_validation: bool      # model selection also scores the eval split's grayscale copy
    critical_class_weight: float
    site_weight_power: float        # class x site balanced sampling: within a class, site drawn ~ count ** power
    mixstyle: float                 # MixStyle probability after the first two blocks (training only; 0 = off)
    look_consistency: float         # weight of the loss that holds each answer when its image takes another site's colours
    weight_average: float           # decay per step of the weights' moving average that is validated and exported
    precision: str                  # auto: training steps in bfloat16 where the CPU has AMX/AVX-512 BF16 | float32
    seed: int


@dataclasses.dataclass(frozen=True)
class Tuning:
    enabled: bool
    max_trials: int
    epochs: int                     # per trial
    search_space: dict[str, list]   # see training/tuning.py


@dataclasses.dataclass(frozen=True)
class SiteBars:
    """One site's own serving bars, where they differ from the pooled ones."""

    min_accuracy: float
    min_critical_recall: float


@dataclasses.dataclass(frozen=True)
class OutOfScopeBars:
    """The serving bars on cells that are none of the classes, at each site."""

    min_out_of_scope_caught: float  # out-of-scope test images called out of scope or sent to review
    max_out_of_scope_alerts: float  # out-of-scope test images that raise the critical alert
    max_in_scope_called_out: float  # test images of the classes called out of scope


@dataclasses.dataclass(frozen=True)
class Evaluation:
    min_accuracy: float             # overall and at every site
    min_critical_recall: float      # overall and at every site that has critical-class test images
    max_regression: float
    hold_out: str                   # a data root's folder name or a site: scored on, never trained on ("" = none)
    site_bars: dict[str, dict[str, float]]  # {site: {min_accuracy, min_critical_recall}}: that site's own bars
    min_out_of_scope_caught: float  # at each site: out-of-scope test images called out of scope or sent to review
    max_out_of_scope_alerts: float  # at each site: out-of-scope test images that raise the critical alert
    max_in_scope_called_out: float  # at each site: test images of the classes called out of scope

    def out_of_scope_bars(self) -> OutOfScopeBars:
        return OutOfScopeBars(self.min_out_of_scope_caught, self.max_out_of_scope_alerts, self.max_in_scope_called_out)

    def bars_of_sites(self) -> dict[str, SiteBars]:
        """The sites with bars of their own, typed."""
        return site_bars(self.site_bars, "evaluation.site_bars")


def site_bars(raw: Any, where: str) -> dict[str, SiteBars]:
    """{site: {min_accuracy, min_critical_recall}} as typed bars; ConfigError names `where` and the site."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: need {{site: {{min_accuracy, min_critical_recall}}}}, got {raw!r}")
    for site, bars in raw.items():
        if not isinstance(bars, dict) or set(bars) != {"min_accuracy", "min_critical_recall"}:
            raise ConfigError(f"{where}.{site}: need {{min_accuracy, min_critical_recall}}, got {bars!r}")
        if not all(isinstance(v, int | float) and 0 <= v <= 1 for v in bars.values()):
            raise ConfigError(f"{where}.{site}: bars are fractions between 0 and 1, got {bars!r}")
    return {site: SiteBars(**bars) for site, bars in raw.items()}


@dataclasses.dataclass(frozen=True)
class Screening:
    alert_recall: float         # critical-class recall the alert threshold is chosen for, on the eval split
    review_confidence: float    # predictions whose calibrated top probability is lower need human review
    out_of_scope_budget: float  # out-of-scope threshold: at most this share of the eval split's in-scope images over it


@dataclasses.dataclass(frozen=True)
class Audit:
    max_stress_drop: float              # accuracy drop allowed on each stress variant of the test split
    min_stress_critical_recall: float   # critical-class recall required on each stress variant


@dataclasses.dataclass(frozen=True)
class Tracking:
    uri: str            # MLflow tracking URI; "" = SQLite store <output_root>/mlflow.db
    experiment: str     # MLflow experiment of the pipeline runs


ADAPTATION_METHODS = ("auto", "adabn", "balanced_adabn", "tent")


@dataclasses.dataclass(frozen=True)
class Adaptation:
    method: str                     # auto (the better of adabn and balanced_adabn, by the site's own answers), adabn,
                                    #   balanced_adabn (each predicted class weighs the same), or tent (then balanced)
    blocks: int                     # batch-norm blocks adapted, the first first
    tent_steps: int                 # tent: batches of the site's images
    tent_learning_rate: float
    min_images: int                 # distinct usable images a site needs
    max_drift: float                # refused: a site further from the training sites (drift, the mean over blocks)
    max_alert_share_drop: float     # refused: the adapted model alerts on a share of the site's images lower by more
    confident_alert: float          # refused: of the alerts the base model raises at this probability or more ...
    max_confident_alerts_lost: float  # ... the adapted model silences more than this share
    sites: dict[str, str]           # the pipeline's step: {site: folder of its unlabelled images}, after each push


@dataclasses.dataclass(frozen=True)
class Serving:
    grpc_target: str            # where `bloodcell predict|status|web` find TF Serving
    batch_size: int             # images per Predict request
    timeout_s: float            # deadline of one gRPC call
    retries: int                # retries on UNAVAILABLE
    max_message_mb: int         # gRPC message size limit, client and local server
    poll_wait_s: float          # local server: how often the model base path is polled for new versions
    web_max_files: int          # images per web request
    web_max_file_bytes: int     # bytes per uploaded image
    max_request_images: int     # the served model refuses a Predict request with more images
    max_image_pixels: int       # ... an image with more pixels (read from its header, before decoding)
    max_request_pixels: int     # ... a request whose images have more pixels together
    max_concurrent_predictions: int  # local server: requests computing at once
    max_queued_requests: int    # local server: requests waiting for a slot; more get RESOURCE_EXHAUSTED
    web_max_connections: int    # web endpoint: connections and requests at once; more get 503
    precision: str              # local server: auto (bfloat16 where the CPU has AMX/AVX-512 BF16, else float32) | float32


@dataclasses.dataclass(frozen=True)
class Kubeflow:
    image: str                      # component image (Dockerfile), the project installed at /app
    pipeline_root: str              # artifacts: gs://, s3:// or a path on the data volume
    data_roots: list[DataRoot]      # default of the data_roots runtime parameter
    serving_root: str               # TF Serving's model volume, as mounted in pipeline pods
    schema_dir: str                 # the curated schema inside the image
    data_pvc: str                   # PersistentVolumeClaim mounted at data_mount in every pipeline pod
    data_mount: str
    models_pvc: str                 # PersistentVolumeClaim shared with TF Serving, mounted at models_mount
    models_mount: str
    adaptation_sites: dict[str, str]  # adaptation.sites inside the cluster: folders on the data volume
    beam_pipeline_args: list[str]   # Beam on Kubeflow: DirectRunner in the pod, or Dataflow/Flink/Spark


@dataclasses.dataclass(frozen=True)
class Config:
    pipeline_name: str
    model_name: str
    paths: Paths
    classes: list[str]
    critical_class: str
    ingestion: Ingestion
    preprocessing: Preprocessing
    augmentation: Augmentation
    training: Training
    tuning: Tuning
    evaluation: Evaluation
    screening: Screening
    audit: Audit
    tracking: Tracking
    adaptation: Adaptation
    serving: Serving
    kubeflow: Kubeflow
    beam_pipeline_args: list[str]

    @property
    def critical_index(self) -> int:
        return self.classes.index(self.critical_class)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A config file or override that names an unknown field or holds a bad value."""


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep:
        raise ConfigError(f"override {override!r} must look like section.field=value")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"override {key!r}: unknown section {part!r}")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"override {key!r}: unknown field {parts[-1]!r}")
    node[parts[-1]] = yaml.safe_load(value)


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    missing = sorted(set(fields) - set(raw))
    if unknown or missing:
        raise ConfigError(f"{where or 'config'}: unknown fields {unknown}, missing fields {missing}")
    values = {}
    for name, field in fields.items():
        value = raw[name]
        if field.type in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{name}: expected a mapping, got {value!r}")
            value = _build(_SECTIONS[field.type], value, f"{where}{name}.")
        values[name] = value
    return cls(**values)


_SECTIONS = {
    c.__name__: c
    for c in (
        Paths, Ingestion, Preprocessing, Augmentation, Training, Tuning,
        Evaluation, Screening, Audit, Tracking, Adaptation, Serving, Kubeflow,
    )
}  # fmt: skip


def from_dict(cls: type, raw: dict[str, Any]) -> Any:
    """A config dataclass (or one made of config sections, like the trainer config) from its plain-dict
    form; ConfigError names an unknown, missing or mistyped field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(raw).__name__}")
    return _build(cls, raw, "")


def _resolve(value: str, base: Path) -> str:
    return value if "://" in value or Path(value).is_absolute() else str((base / value).resolve())


def _resolve_sites(raw: dict[str, Any], base: Path) -> None:
    """adaptation.sites' folders, relative to the config file."""
    sites = (raw.get("adaptation") or {}).get("sites")
    if isinstance(sites, dict):
        raw["adaptation"]["sites"] = {k: _resolve(v, base) if isinstance(v, str) else v for k, v in sites.items()}


def _resolve_paths(paths: dict[str, Any], base: Path) -> None:
    for key, value in paths.items():
        if key == "data_roots":
            roots = [parse_data_root(v) for v in (value if isinstance(value, list) else [value])]
            paths[key] = [dataclasses.replace(r, path=_resolve(r.path, base)) for r in roots]
        else:
            paths[key] = _resolve(value, base)


def _parse_roots(section: dict[str, Any]) -> None:
    values = section.get("data_roots")
    if isinstance(values, list):
        section["data_roots"] = [parse_data_root(v) for v in values]


def _validate(config: Config) -> None:
    if len(set(config.classes)) != len(config.classes) or not config.classes:
        raise ConfigError(f"classes: must be distinct and non-empty, got {config.classes}")
    if config.critical_class not in config.classes:
        raise ConfigError(f"critical_class: {config.critical_class!r} is not one of {config.classes}")
    ratios = config.ingestion.split_ratios
    if set(ratios) != {"train", "eval", "test"} or abs(sum(ratios.values()) - 1) > 1e-6:
        raise ConfigError(f"ingestion.split_ratios: need train/eval/test summing to 1, got {ratios}")
    if config.preprocessing.image_size < 16:
        raise ConfigError("preprocessing.image_size: must be at least 16")
    blocks = len(config.training.filters)
    if config.preprocessing.image_size < 2**blocks:
        raise ConfigError(
            f"preprocessing.image_size: {config.preprocessing.image_size} px is too small for {blocks} blocks of "
            f"training.filters (each halves it): at least {2**blocks}"
        )
    if not 0.1 <= config.preprocessing.central_crop <= 1.0:
        raise ConfigError("preprocessing.central_crop: must be between 0.1 and 1.0")
    if config.preprocessing.cell_window and not 2.0 <= config.preprocessing.cell_window <= 20.0:
        raise ConfigError("preprocessing.cell_window: 0 (off) or between 2 and 20 nucleus radii")
    if not 1 <= config.preprocessing.test_time_views <= 8:
        raise ConfigError("preprocessing.test_time_views: must be between 1 and 8 (the symmetries of a square)")
    for name, probability in (
        ("training.mixstyle", config.training.mixstyle),
        ("augmentation.colour_transfer", config.augmentation.colour_transfer),
        ("augmentation.random_convolution", config.augmentation.random_convolution),
        ("augmentation.magnification_swap", config.augmentation.magnification_swap),
    ):
        if not 0.0 <= probability <= 1.0:
            raise ConfigError(f"{name}: a probability, between 0 and 1")
    for name, precision in (("serving.precision", config.serving.precision), ("training.precision", config.training.precision)):
        if precision not in ("auto", "float32"):
            raise ConfigError(f"{name}: auto or float32, got {precision!r}")
    if not 0.0 <= config.training.weight_average < 1.0:
        raise ConfigError("training.weight_average: 0 (off) or a decay per step, at least 0 and under 1")
    if config.training.look_consistency < 0:
        raise ConfigError("training.look_consistency: must be 0 (off) or a positive loss weight")
    if not 0.0 <= config.training.site_weight_power <= 1.0:
        raise ConfigError("training.site_weight_power: must be between 0 (sites equally often) and 1 (as found)")
    for name, share in (
        ("screening.out_of_scope_budget", config.screening.out_of_scope_budget),
        ("evaluation.min_out_of_scope_caught", config.evaluation.min_out_of_scope_caught),
        ("evaluation.max_out_of_scope_alerts", config.evaluation.max_out_of_scope_alerts),
        ("evaluation.max_in_scope_called_out", config.evaluation.max_in_scope_called_out),
    ):
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"{name}: a share, between 0 and 1")
    _validate_site_magnification(config.augmentation)
    site_bars(config.evaluation.site_bars, "evaluation.site_bars")
    if config.augmentation.blur < 0 or config.augmentation.sharpen < 0:
        raise ConfigError("augmentation.blur and augmentation.sharpen: must be 0 (off) or positive")
    quality = config.augmentation.jpeg_quality
    if quality and not (len(quality) == 2 and 0 <= quality[0] <= quality[1] <= 100):
        raise ConfigError(f"augmentation.jpeg_quality: need [lo, hi] with 0 <= lo <= hi <= 100, or [], got {quality}")
    if config.training.epochs < 1 or config.training.batch_size < 1:
        raise ConfigError("training.epochs and training.batch_size: must be positive")
    for where, roots in (("paths.data_roots", config.paths.data_roots), ("kubeflow.data_roots", config.kubeflow.data_roots)):
        try:
            check_roots(roots)
        except DataRootError as err:
            raise ConfigError(f"{where}: {err}") from None
    adaptation = config.adaptation
    if adaptation.method not in ADAPTATION_METHODS:
        raise ConfigError(f"adaptation.method: one of {', '.join(ADAPTATION_METHODS)}, got {adaptation.method!r}")
    if not 1 <= adaptation.blocks <= len(config.training.filters):
        raise ConfigError(f"adaptation.blocks: between 1 and the {len(config.training.filters)} blocks of training.filters")
    shares = (adaptation.max_alert_share_drop, adaptation.confident_alert, adaptation.max_confident_alerts_lost)
    if not all(0 <= share <= 1 for share in shares):
        raise ConfigError(
            "adaptation.max_alert_share_drop, confident_alert and max_confident_alerts_lost: between 0 and 1"
        )
    if adaptation.min_images < 1 or adaptation.tent_steps < 0 or adaptation.max_drift <= 0:
        raise ConfigError("adaptation.min_images and adaptation.max_drift: positive; adaptation.tent_steps: 0 or more")
    for where, sites in (("adaptation.sites", adaptation.sites), ("kubeflow.adaptation_sites", config.kubeflow.adaptation_sites)):
        if not isinstance(sites, dict) or not all(isinstance(v, str) for v in sites.values()):
            raise ConfigError(f"{where}: need {{site: folder}}, got {sites!r}")
        for site in sites:
            try:
                check_site_name(site)
            except SiteNameError as err:
                raise ConfigError(f"{where}: {err}") from None
    if config.serving.batch_size < 1 or config.serving.web_max_files < 1:
        raise ConfigError("serving.batch_size and serving.web_max_files: must be positive")
    if max(config.serving.batch_size, config.serving.web_max_files) > config.serving.max_request_images:
        raise ConfigError("serving.batch_size and serving.web_max_files: must not exceed serving.max_request_images")
    if not 0 < config.serving.max_image_pixels <= config.serving.max_request_pixels:
        raise ConfigError("serving.max_image_pixels: must be positive and at most serving.max_request_pixels")


def _validate_site_magnification(augmentation: Augmentation) -> None:
    magnification = augmentation.site_magnification
    if not isinstance(magnification, dict) or not all(
        isinstance(v, int | float) and v > 0 for v in magnification.values()
    ):
        raise ConfigError(f"augmentation.site_magnification: need {{site: positive number}}, got {magnification!r}")
    if augmentation.magnification_swap and len(magnification) < 2:
        raise ConfigError("augmentation.magnification_swap: needs at least two sites in augmentation.site_magnification")
    if magnification and max(magnification.values()) > 3 * min(magnification.values()):
        raise ConfigError("augmentation.site_magnification: the largest may be at most 3 times the smallest")


def load_config(path: str | Path = DEFAULT_CONFIG, overrides: list[str] | None = None) -> Config:
    """Reads the YAML config, applies `section.field=value` overrides and resolves relative paths."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from err
    raw = copy.deepcopy(raw)
    for override in overrides or []:
        _apply_override(raw, override)
    if not isinstance(raw.get("paths"), dict):
        raise ConfigError(f"{path}: 'paths' section missing")
    try:
        _resolve_paths(raw["paths"], path.resolve().parent)
        _resolve_sites(raw, path.resolve().parent)
        _parse_roots(raw.get("kubeflow") or {})
    except DataRootError as err:
        raise ConfigError(f"{path}: {err}") from None
    config = _build(Config, raw, "")
    _validate(config)
    return config
