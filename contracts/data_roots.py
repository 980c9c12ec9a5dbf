"""Data roots: labelled image folders `<path>/<class>/**`, each from one or more sites (hospital, scanner),
as the config, the command line and the pipeline's `data_roots` parameter name them."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

MANIFEST_FILE = "MANIFEST.csv"  # optional, in a root: `file` and `site` columns


class DataRootError(ValueError):
    """A data root setting that cannot be used: the message names the root and the reason."""


@dataclasses.dataclass(frozen=True)
class DataRoot:
    path: str
    site: str = ""  # site of the images MANIFEST.csv does not name ("" = the root's folder name)

    @property
    def name(self) -> str:
        """The root's folder name: prefixes its images' paths in the report and the tf.Examples."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]


def parse_data_root(value: Any) -> DataRoot:
    """A root from the config (`PATH` or `{path: PATH, site: SITE}`) or the command line (`PATH[=SITE]`)."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"path", "site"})
        if unknown or not isinstance(value.get("path"), str) or not value["path"]:
            raise DataRootError(f"data root {value!r}: expected {{path: PATH, site: SITE}}, unknown keys {unknown}")
        return DataRoot(value["path"], str(value.get("site") or ""))
    if isinstance(value, str) and value:
        path, sep, site = value.rpartition("=")
        return DataRoot(path, site) if sep and path else DataRoot(value)
    raise DataRootError(f"data root {value!r}: expected a path or {{path: PATH, site: SITE}}")


def check_roots(roots: list[DataRoot]) -> None:
    """Raises DataRootError for an empty list or two roots with one folder name (paths would collide)."""
    if not roots:
        raise DataRootError("no data root given")
    names = [r.name for r in roots]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise DataRootError(f"data roots share a folder name: {', '.join(clashes)} (rename one folder)")


def roots_to_json(roots: list[DataRoot]) -> str:
    """The roots as the JSON list the ImageExampleGen parameter (and the Kubeflow runtime parameter) takes."""
    return json.dumps([dataclasses.asdict(r) for r in roots])


def roots_from_json(text: str) -> list[DataRoot]:
    """The roots of a `data_roots` JSON parameter, checked; DataRootError names what is wrong."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataRootError(f"data_roots {text!r}: not JSON ({err})") from None
    if not isinstance(values, list):
        raise DataRootError(f"data_roots {text!r}: expected a JSON list of {{path, site}}")
    roots = [parse_data_root(v) for v in values]
    check_roots(roots)
    return roots
