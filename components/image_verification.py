"""Finds the labelled images under the data roots and verifies each file by decoding it fully."""

from __future__ import annotations

import dataclasses
import hashlib

import imagehash
import tensorflow as tf
from PIL import Image

from components.file_listing import UnreadableFileError, file_size, list_files, read_file
from components.site_resolver import SiteResolver
from contracts import features
from contracts.data_roots import MANIFEST_FILE, DataRoot
from contracts.image_check import ImageRejectedError, Limits, check_image


class IngestionError(RuntimeError):
    """The data roots as a whole cannot be ingested (missing or empty class folders)."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A file found under a data root, with the class named by its top-level folder (None if unknown) and
    its site (None if unknown)."""

    root: DataRoot
    relpath: str  # under the root: <class folder>/...
    label_name: str | None
    site: str | None
    problem: str = ""  # why the listed entry cannot be read as a file ("" = none known)

    @property
    def path(self) -> str:
        return _join(self.root.path, self.relpath)

    @property
    def key(self) -> str:
        """`<root name>/<relpath>`: names the file in the report and the tf.Examples, unique across roots."""
        return f"{self.root.name}/{self.relpath}"


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    relpath: str  # <root name>/<class>/...
    label_name: str
    site: str
    sha256: str
    height: int
    width: int
    image_bytes: bytes
    converted_from: str  # "" when the original bytes are kept
    phash: str  # perceptual hash (256 bits, hex): finds resized and re-encoded copies


@dataclasses.dataclass(frozen=True)
class Rejection:
    relpath: str
    reason: str


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def find_candidates(
    roots: list[DataRoot], classes: list[str], every_class: bool = True
) -> tuple[list[Candidate], list[str]]:
    """Lists every file in the class folders of every root (recursively), with its site, and every stray file.

    Returns the candidates, sorted by root and path, and the top-level files that are not in any folder
    (documentation such as PROVENANCE.md, MANIFEST.csv) as `<root name>/<file>`: not images of the dataset.
    A root may lack some classes (a site that sent none). Raises IngestionError naming the root when a root
    is missing, or, with `every_class` (training needs them all), the roots when a class has a folder in none
    of them.
    """
    candidates, loose = [], []
    missing = set(classes)
    for root in roots:
        top = root.path
        if not tf.io.gfile.isdir(top):
            raise IngestionError(f"data root {top} does not exist or is not a folder")
        if not root.out_of_scope:
            missing -= {c for c in classes if tf.io.gfile.isdir(_join(top, c))}
        sites = SiteResolver(root)
        for name in sorted(entry.rstrip("/") for entry in tf.io.gfile.listdir(top)):
            if not tf.io.gfile.isdir(_join(top, name)):
                loose.append(f"{root.name}/{name}")
                continue
            label, problem = folder_label(root, name, classes)
            for listed in list_files(_join(top, name)):
                relpath = f"{name}/{listed.relpath}"
                candidates.append(Candidate(root, relpath, label, sites.site_of(relpath), listed.problem or problem))
    if missing and every_class:
        where = ", ".join(r.path for r in roots)
        raise IngestionError(f"data root {where}: class folders missing: {', '.join(c for c in classes if c in missing)}")
    return candidates, loose


def folder_label(root: DataRoot, folder: str, classes: list[str]) -> tuple[str | None, str]:
    """The label of a root's top-level folder and why its files cannot be taken ("" = they can): a class
    folder of a root of the classes is its class; every folder of an out-of-scope root is a cell type,
    labelled OUT_OF_SCOPE, unless it is named like a class (which would mix the two)."""
    if not root.out_of_scope:
        return (folder if folder in classes else None), ""
    if folder in classes:
        return None, f"folder '{folder}' of out-of-scope root {root.name} is one of the classes: move it to a root of the classes"
    return features.OUT_OF_SCOPE, ""


def cell_type(relpath: str) -> str:
    """The cell type of an ingested image: its top-level folder (`<root name>/<folder>/...`)."""
    return relpath.split("/")[1]


def perceptual_hash(image: Image.Image) -> str:
    """256-bit DCT hash (hex): equal or within a few bits for resized and re-encoded copies of one image."""
    return str(imagehash.phash(image, hash_size=16))


def listing_problem(candidate: Candidate) -> str:
    """Why a listed file cannot be taken before it is read: unlistable, no class or no site ("" = none)."""
    if candidate.problem:
        return candidate.problem
    if candidate.label_name is None:
        return f"unknown class folder '{candidate.relpath.split('/')[0]}'"
    if candidate.site is None:
        return f"no site: not listed in {candidate.root.name}/{MANIFEST_FILE} and no site given for the root in the config"
    return ""


def read_candidate(candidate: Candidate, limits: Limits) -> bytes:
    """The file's bytes. Raises ImageRejectedError for a file over `limits.max_file_bytes` (checked before it
    is read into memory) and UnreadableFileError for one that cannot be read."""
    size = file_size(candidate.path)
    if size > limits.max_file_bytes:
        raise ImageRejectedError(f"file too large: {size} bytes > max_file_bytes {limits.max_file_bytes}")
    return read_file(candidate.path)


def _read_checked(candidate: Candidate, limits: Limits) -> ImageRecord | Rejection:
    problem = listing_problem(candidate)
    if problem:
        return Rejection(candidate.key, problem)
    try:
        data = read_candidate(candidate, limits)
        checked = check_image(data, limits)
    except (UnreadableFileError, ImageRejectedError) as err:
        return Rejection(candidate.key, str(err))
    return ImageRecord(
        relpath=candidate.key,
        label_name=candidate.label_name,
        site=candidate.site,
        sha256=hashlib.sha256(data).hexdigest(),
        height=checked.height,
        width=checked.width,
        image_bytes=checked.image_bytes,
        converted_from=checked.converted_from,
        phash=perceptual_hash(checked.pixels),
    )


def verify_image(candidate: Candidate, limits: Limits) -> ImageRecord | Rejection:
    """Reads and decodes one file fully and returns it as a record, or a rejection that says why. Never
    raises for a file: an unexpected failure is a rejection that names the error."""
    try:
        return _read_checked(candidate, limits)
    except Exception as err:  # noqa: BLE001 - one file must not stop the run; the reason is kept
        return Rejection(candidate.key, f"unexpected error while reading ({type(err).__name__}): {err}")


def fingerprint(roots: list[DataRoot]) -> str:
    """A cheap identity of the roots' contents: SHA-256 over every file's path, size and mtime, and the sites."""
    digest = hashlib.sha256()
    for root in roots:
        digest.update(f"{root.name}\0{root.site}\n".encode())
        for listed in list_files(root.path):
            try:
                stat = tf.io.gfile.stat(_join(root.path, listed.relpath))
                state = f"{stat.length}\0{stat.mtime_nsec}"
            except tf.errors.OpError:  # unreadable entries are rejected by ingestion; here they only count
                state = "unreadable"
            digest.update(f"{listed.relpath}\0{listed.problem}\0{state}\n".encode())
    return digest.hexdigest()
