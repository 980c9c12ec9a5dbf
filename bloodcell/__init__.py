"""The pipeline's own TFX artifact types.

The package is named after their namespace on purpose: a compiled Kubeflow pipeline names a custom artifact type
by its schema title (`bloodcell.IngestionReport`), and TFX's Kubeflow v2 entrypoint imports that title as a class
path inside the component image. Each TYPE_NAME is therefore `<this package>.<class>`.
"""

from tfx.types import artifact


class IngestionReport(artifact.Artifact):
    """JSON account of every file found: ingested (with its split), duplicate, or rejected and why."""

    TYPE_NAME = "bloodcell.IngestionReport"


class ShortcutAuditReport(artifact.Artifact):
    """audit.json: colour baseline, per-acquisition-group and per-site figures, stress-variant figures."""

    TYPE_NAME = "bloodcell.ShortcutAuditReport"


class RunSummary(artifact.Artifact):
    """A run's summary.json, classification report, confusion matrix and training curves."""

    TYPE_NAME = "bloodcell.RunSummary"


class SiteAdaptations(artifact.Artifact):
    """adaptations.json: for each configured site, the adapted model's record, or why adaptation was refused."""

    TYPE_NAME = "bloodcell.SiteAdaptations"
