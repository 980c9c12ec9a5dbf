"""The site of each image: the root's MANIFEST.csv (`file` and `site` columns) when it has one, else the
`site` given for the root in the config, else the root's folder name (one folder, one site)."""

from __future__ import annotations

import csv
import io

import tensorflow as tf

from contracts.data_roots import MANIFEST_FILE, DataRoot


def manifest_sites(root: DataRoot) -> dict[str, str]:
    """`file` -> `site` from the root's MANIFEST.csv; empty when there is no manifest or no site column."""
    path = f"{root.path.rstrip('/')}/{MANIFEST_FILE}"
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        reader = csv.DictReader(io.StringIO(f.read()))
        if not {"file", "site"} <= set(reader.fieldnames or []):
            return {}
        return {row["file"]: row["site"] for row in reader if row["site"]}


class SiteResolver:
    """The site of each file of one root: its MANIFEST.csv row, else the root's configured site.

    A root without a manifest site column and without a configured site is one site, named after the
    folder. A file missing from a manifest that has a site column, in a root without a configured site,
    has no site: `site_of` returns None and ingestion rejects it with a reason.
    """

    def __init__(self, root: DataRoot):
        self.root, self.sites = root, manifest_sites(root)
        self.fallback = root.site or ("" if self.sites else root.name)

    def site_of(self, relpath: str) -> str | None:
        return self.sites.get(relpath) or self.fallback or None
