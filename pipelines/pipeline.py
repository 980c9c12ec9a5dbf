"""The blood-cell screening TFX pipeline, one definition for every orchestrator."""

from __future__ import annotations

import json
import os

from tfx import v1 as tfx

from components.evaluation import build_eval_config
from components.image_example_gen import ImageExampleGen
from components.run_report import RunReport
from components.validation_gate import AnomaliesGate, class_coverage_check
from pipelines.configs import Config, trainer_config

TRAINER_MODULE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "components", "training", "trainer_module.py"
)


def create_pipeline(
    config: Config,
    pipeline_root: str,
    metadata_connection_config=None,
    input_fingerprint: str = "",
    use_resolver: bool = True,
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
    """Ingestion -> validation -> training -> evaluation gate -> push -> run report.

    `use_resolver` compares the candidate against the latest blessed model (LatestBlessedModelStrategy);
    orchestrators without Resolver support switch it off.
    """
    example_gen = ImageExampleGen(
        data_root=config.paths.data_root,
        classes_json=json.dumps(config.classes),
        split_json=json.dumps({"ratios": config.ingestion.split_ratios, "seed": config.ingestion.split_seed}),
        limits_json=json.dumps(
            {
                "max_pixels": config.ingestion.max_pixels,
                "min_side": config.ingestion.min_side,
                "max_file_bytes": config.ingestion.max_file_bytes,
            }
        ),
        input_fingerprint=input_fingerprint,
    )
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.ImportSchemaGen(schema_file=os.path.join(config.paths.schema_dir, "schema.pbtxt"))
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_gen.outputs["schema"],
        custom_validation_config=class_coverage_check(len(config.classes)),
    )
    anomalies_gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])
    trainer = tfx.components.Trainer(
        module_file=TRAINER_MODULE,
        examples=example_gen.outputs["examples"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]),
        custom_config=trainer_config(config),
    )
    trainer.add_upstream_node(anomalies_gate)
    components = [example_gen, statistics_gen, schema_gen, example_validator, anomalies_gate, trainer]

    baseline = None
    if use_resolver:
        resolver = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id("latest_blessed_model_resolver")
        baseline = resolver.outputs["model"]
        components.append(resolver)
    evaluation = config.evaluation
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=baseline,
        example_splits=["test"],
        eval_config=build_eval_config(
            config.classes,
            config.critical_class,
            evaluation.min_accuracy,
            evaluation.min_critical_recall,
            evaluation.max_regression if use_resolver else None,
        ),
    )
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(
                base_directory=os.path.join(config.paths.serving_root, config.model_name)
            )
        ),
    )
    run_report = RunReport(
        ingestion_report=example_gen.outputs["report"],
        model_run=trainer.outputs["model_run"],
        evaluation=evaluator.outputs["evaluation"],
        pushed_model=pusher.outputs["pushed_model"],
        classes_json=json.dumps(config.classes),
        critical_class=config.critical_class,
    )
    components += [evaluator, pusher, run_report]
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=config.beam_pipeline_args,
    )
