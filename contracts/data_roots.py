"""Data roots: labelled image folders `<path>/<class>/**`, each from one or more sites (hospital, scanner),
as the config, the command line and the pipeline's `data_roots` parameter name them. A root with the role
`out_of_scope` holds cells that are none of the classes, one folder per cell type."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

MANIFEST_FILE = "MANIFEST.csv"  # optional, in a root: `file` and `site` columns
OUT_OF_SCOPE_ROLE = "out_of_scope"  # a root of cells that are none of the classes: its folders are cell types
ROLES = ("", OUT_OF_SCOPE_ROLE)  # "": a root of the classes


class DataRootError(ValueError):
    """A data root setting that cannot be used: the message names the root and the reason."""


@dataclasses.dataclass(frozen=True)
class DataRoot:
    path: str
    site: str = ""  # site of the images MANIFEST.csv does not name ("" = the root's folder name)
    role: str = ""  # "" (class folders) or OUT_OF_SCOPE_ROLE (cell-type folders, none of the classes)

    @property
    def name(self) -> str:
        """The root's folder name: prefixes its images' paths in the report and the tf.Examples."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def out_of_scope(self) -> bool:
        return self.role == OUT_OF_SCOPE_ROLE


def parse_data_root(value: Any) -> DataRoot:
    """A root from the config (`PATH` or `{path: PATH, site: SITE, role: ROLE}`) or the command line
    (`PATH[=SITE]`)."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"path", "site", "role"})
        if unknown or not isinstance(value.get("path"), str) or not value["path"]:
            raise DataRootError(f"data root {value!r}: expected {{path: PATH, site: SITE, role: ROLE}}, unknown keys {unknown}")
        role = str(value.get("role") or "")
        if role not in ROLES:
            raise DataRootError(f"data root {value['path']}: role {role!r} is not one of {[r for r in ROLES if r]} (or none)")
        return DataRoot(value["path"], str(value.get("site") or ""), role)
    if isinstance(value, str) and value:
        path, sep, site = value.rpartition("=")
        return DataRoot(path, site) if sep and path else DataRoot(value)
    raise DataRootError(f"data root {value!r}: expected a path or {{path: PATH, site: SITE}}")


def has_out_of_scope(roots: list[DataRoot]) -> bool:
    """Whether some root holds out-of-scope cells (the model then learns to answer "none of the classes")."""
    return any(r.out_of_scope for r in roots)


def with_roots_given(
    configured: list[DataRoot], class_roots: list[str] | None, out_of_scope_roots: list[str] | None
) -> list[DataRoot]:
    """The configured roots with the command line's in place (each `PATH[=SITE]`): roots of the classes, and
    out-of-scope roots; a kind the command line does not name keeps the configured roots of that kind."""
    classes = [parse_data_root(r) for r in class_roots] if class_roots else [r for r in configured if not r.out_of_scope]
    outside = (
        [dataclasses.replace(parse_data_root(r), role=OUT_OF_SCOPE_ROLE) for r in out_of_scope_roots]
        if out_of_scope_roots
        else [r for r in configured if r.out_of_scope]
    )
    return classes + outside


def check_roots(roots: list[DataRoot]) -> None:
    """Raises DataRootError for a list without a root of the classes or two roots with one folder name
    (paths would collide)."""
    if not [r for r in roots if not r.out_of_scope]:
        raise DataRootError("no data root of the classes given")
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
        raise DataRootError(f"data_roots {text!r}: expected a JSON list of {{path, site, role}}")
    roots = [parse_data_root(v) for v in values]
    check_roots(roots)
    return roots
