"""The pipeline step of `bloodcell adapt`: after a push, each site of `adaptation.sites` is adapted anew from the
pushed model, so that a site's model never lags behind the base model it was adapted from."""

import dataclasses
import json
import logging
import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from bloodcell import SiteAdaptations
from components.experiment_tracking import log_adaptation
from components.site_adapter import AdaptationRefusedError, adapt_site
from contracts.artifacts import write_json
from contracts.config import Adaptation, from_dict
from contracts.image_check import Limits
from contracts.signatures import site_model_name

ADAPTATIONS_FILE = "adaptations.json"


@component
def SiteAdapter(  # noqa: N802 - TFX component names are classes
    pushed_model: InputArtifact[standard_artifacts.PushedModel],
    sites_json: Parameter[str],
    settings_json: Parameter[str],
    limits_json: Parameter[str],
    serving_root: Parameter[str],
    model_name: Parameter[str],
    tracking_uri: Parameter[str],
    experiment: Parameter[str],
    adaptations: OutputArtifact[SiteAdaptations],
):
    """When the run pushed a model: adapts it to each site's unlabelled images (`sites_json`: {site: folder}) and
    publishes each as the next version of the site's model, as `bloodcell adapt` does; records in
    adaptations.json each site's AdaptationRecord and MLflow run, or why it was refused (the site then keeps
    the versions it had). A run that pushed nothing adapts nothing."""
    sites = json.loads(sites_json)
    settings = from_dict(Adaptation, json.loads(settings_json))
    limits = Limits(**json.loads(limits_json))
    results: dict[str, dict] = {}
    pushed = bool(pushed_model.get_int_custom_property("pushed"))
    if pushed:
        destination = pushed_model.get_string_custom_property("pushed_destination")
        version = int(pushed_model.get_string_custom_property("pushed_version"))
        for site, folder in sorted(sites.items()):
            try:
                record = adapt_site(destination, folder, site, settings, limits, serving_root, model_name, version)
            except AdaptationRefusedError as err:
                logging.warning("SiteAdapter: %s not adapted to the pushed model: %s", site, err)
                results[site] = {"refused": str(err)}
                continue
            published = os.path.join(serving_root, site_model_name(model_name, site), str(record.version))
            tracked = log_adaptation(tracking_uri, experiment, site_model_name(model_name, site), record, published)
            results[site] = {"record": dataclasses.asdict(record), "tracking": tracked}
            logging.info("SiteAdapter: %s adapted, served as version %d", site, record.version)
    else:
        logging.info("SiteAdapter: nothing pushed, no site adapted")
    write_json(adaptations.uri, ADAPTATIONS_FILE, {"pushed": pushed, "sites": results})
