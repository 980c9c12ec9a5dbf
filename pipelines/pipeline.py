"""The blood-cell screening TFX pipeline, one definition for every orchestrator."""

from __future__ import annotations

import dataclasses
import json
import os

# TFX's own modules rather than `tfx.v1`, which also imports the Google Cloud extensions (Vertex AI, BigQuery):
# 5.5 s more at every start of a run, a step or a test process on a 2-core CPU.
from tfx.components import Evaluator, ExampleValidator, StatisticsGen, Trainer, Tuner
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.dsl.placeholder import placeholder as ph
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import pusher_pb2, trainer_pb2

from components.atomic_pusher import AtomicPusher
from components.audit.audit_component import ShortcutAudit
from components.evaluation import build_eval_config
from components.image_example_gen import ImageExampleGen
from components.run_report import RunReport
from components.serving_gate import ServingGate
from components.site_adapter_step import SiteAdapter
from components.validation_gate import AnomaliesGate
from contracts.artifacts import HOLDOUT, out_of_scope_split
from contracts.config import Config
from contracts.data_roots import has_out_of_scope
from pipelines.configs import RunSettings, serving_dir, tracking_uri, trainer_config

# Steps that look at state outside the pipeline's artifacts (files under the data root, the served model):
# orchestrators that cache by inputs alone must not cache them.
UNCACHEABLE = ("ImageExampleGen", "ServingGate", "SiteAdapter")


@dataclasses.dataclass(frozen=True)
class TrainerCode:
    """Where the Trainer and the Tuner find their functions: a module file that TFX packages (local runs), or
    functions of the package installed in the component image (Kubeflow)."""

    module_file: str | None = None
    run_fn: str | None = None
    tuner_fn: str | None = None


def create_pipeline(
    config: Config,
    pipeline_root: str,
    settings: RunSettings,
    trainer_code: TrainerCode,
    pipeline_run_id: str | ph.Placeholder = "",
    metadata_connection_config=None,
    input_fingerprint: str = "",
    serving_state: str = "",
    enable_cache: bool = True,
) -> Pipeline:
    """Ingestion -> validation -> [tuning] -> training -> evaluation (per site) + [held-out evaluation] +
    shortcut audit -> serving gate -> push -> run report (model card, MLflow) + [each site of
    `adaptation.sites` adapted to the pushed model].

    The runners choose what differs between orchestrators: `settings` (values, or Kubeflow runtime
    parameters), `trainer_code`, the `pipeline_run_id` the report records, and for the local runner's cache
    `input_fingerprint` and `serving_state` (the data roots and the served model).
    """
    classes_json = json.dumps(config.classes)
    hold_out = config.evaluation.hold_out
    example_gen = ImageExampleGen(
        data_roots_json=settings.data_roots,
        classes_json=classes_json,
        split_json=json.dumps({"ratios": config.ingestion.split_ratios, "seed": config.ingestion.split_seed}),
        limits_json=json.dumps(
            {
                "max_pixels": config.ingestion.max_pixels,
                "min_side": config.ingestion.min_side,
                "max_file_bytes": config.ingestion.max_file_bytes,
            }
        ),
        hold_out=hold_out,
        input_fingerprint=input_fingerprint,
    )
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = ImportSchemaGen(schema_file=os.path.join(config.paths.schema_dir, "schema.pbtxt"))
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    anomalies_gate = AnomaliesGate(
        anomalies=example_validator.outputs["anomalies"],
        statistics=statistics_gen.outputs["statistics"],
        ingestion_report=example_gen.outputs["report"],
        classes_json=classes_json,
        hold_out=hold_out,
    )
    # Cells that are none of the five (roots with role out_of_scope) are learnt as one more output.
    with_out_of_scope = has_out_of_scope(config.paths.data_roots)
    train_splits, eval_splits = (
        [split, *([out_of_scope_split(split)] if with_out_of_scope else [])] for split in ("train", "eval")
    )
    splits = {"train_args": trainer_pb2.TrainArgs(splits=train_splits), "eval_args": trainer_pb2.EvalArgs(splits=eval_splits)}
    tuner = None
    if config.tuning.enabled:
        tuner = Tuner(
            module_file=trainer_code.module_file,
            tuner_fn=trainer_code.tuner_fn,
            examples=example_gen.outputs["examples"],
            # The KFP v2 compiler wires runtime parameters into the Trainer's custom_config but not the
            # Tuner's: the search runs with the compiled config, the Trainer with the run's parameters.
            custom_config=trainer_config(config).as_dict(),
            **splits,
        )
        tuner.add_upstream_node(anomalies_gate)
    trainer = Trainer(
        module_file=trainer_code.module_file,
        run_fn=trainer_code.run_fn,
        examples=example_gen.outputs["examples"],
        hyperparameters=tuner.outputs["best_hyperparameters"] if tuner else None,
        custom_config=settings.trainer_config,
        **splits,
    )
    trainer.add_upstream_node(anomalies_gate)
    eval_config = build_eval_config(config.classes, config.critical_class)
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        example_splits=["test"],
        eval_config=eval_config,
    )
    # A held-out root or site: the honest estimate for a new hospital, scored by TFMA like the test split.
    hold_out_evaluator = (
        Evaluator(
            examples=example_gen.outputs["examples"],
            model=trainer.outputs["model"],
            example_splits=[HOLDOUT],
            eval_config=eval_config,
        ).with_id("HoldOutEvaluator")
        if hold_out
        else None
    )
    audit = ShortcutAudit(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        classes_json=classes_json,
        critical_class=config.critical_class,
        max_stress_drop=config.audit.max_stress_drop,
        min_stress_critical_recall=config.audit.min_stress_critical_recall,
    )
    serving_gate = ServingGate(
        model=trainer.outputs["model"],
        evaluation=evaluator.outputs["evaluation"],
        examples=example_gen.outputs["examples"],
        serving_dir=serving_dir(config),
        classes_json=classes_json,
        critical_class=config.critical_class,
        min_accuracy=settings.min_accuracy,
        min_critical_recall=settings.min_critical_recall,
        max_regression=settings.max_regression,
        hold_out=hold_out,
        serving_state=serving_state,
        site_bars_json=settings.site_bars,
        out_of_scope_bars_json=settings.out_of_scope_bars,
    )
    pusher = AtomicPusher(
        model=trainer.outputs["model"],
        model_blessing=serving_gate.outputs["blessing"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=serving_dir(config))
        ),
    ).with_id("Pusher")
    run_report = RunReport(
        ingestion_report=example_gen.outputs["report"],
        model_run=trainer.outputs["model_run"],
        evaluation=evaluator.outputs["evaluation"],
        blessing=serving_gate.outputs["blessing"],
        pushed_model=pusher.outputs["pushed_model"],
        audit=audit.outputs["audit"],
        tuner_results=tuner.outputs["tuner_results"] if tuner else None,
        hold_out_evaluation=hold_out_evaluator.outputs["evaluation"] if hold_out_evaluator else None,
        classes_json=classes_json,
        critical_class=config.critical_class,
        hold_out=hold_out,
        model_name=config.model_name,
        settings_json=json.dumps(config.as_dict()),
        tracking_uri=tracking_uri(config),
        experiment=config.tracking.experiment,
        pipeline_run_id=pipeline_run_id,
    )
    # Sites with a model of their own (`bloodcell adapt`): adapted anew to each pushed model.
    site_adapter = (
        SiteAdapter(
            pushed_model=pusher.outputs["pushed_model"],
            sites_json=json.dumps(config.adaptation.sites),
            settings_json=json.dumps(dataclasses.asdict(config.adaptation)),
            limits_json=json.dumps(
                {
                    "max_pixels": config.serving.max_image_pixels,
                    "min_side": config.ingestion.min_side,
                    "max_file_bytes": config.ingestion.max_file_bytes,
                }
            ),  # fmt: skip
            serving_root=os.path.dirname(serving_dir(config)),
            model_name=config.model_name,
            tracking_uri=tracking_uri(config),
            experiment=config.tracking.experiment,
        )
        if config.adaptation.sites
        else None
    )
    components = [
        example_gen, statistics_gen, schema_gen, example_validator, anomalies_gate, *([tuner] if tuner else []),
        trainer, evaluator, *([hold_out_evaluator] if hold_out_evaluator else []), audit, serving_gate, pusher,
        run_report, *([site_adapter] if site_adapter else []),
    ]  # fmt: skip
    return Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=config.beam_pipeline_args,
    )
