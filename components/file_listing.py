"""Lists and reads the files of a data folder so that no entry can stop ingestion: every listed entry is
either readable or carries the reason it is not (broken or looping symbolic link, FIFO or device, no
permission, a name that is not UTF-8, a folder that cannot be listed, a file that vanished)."""

from __future__ import annotations

import dataclasses
import errno
import os
import stat

import tensorflow as tf


class UnreadableFileError(OSError):
    """A listed entry that cannot be read as a file; the message says why."""


@dataclasses.dataclass(frozen=True)
class Listed:
    relpath: str  # under the listed folder, '/'-separated; undecodable bytes shown as \\xNN
    problem: str = ""  # why the entry cannot be read ("" = a file, as far as listing can tell)


def is_local(path: str) -> bool:
    return "://" not in path


def printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (kept by the OS as surrogates) shown as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _local_files(top: str) -> list[Listed]:
    found: list[Listed] = []
    seen = {os.path.realpath(top)}

    def on_error(err: OSError) -> None:
        relative = os.path.relpath(err.filename, top) if err.filename else "."
        found.append(Listed(printable(relative).replace(os.sep, "/") + "/", f"cannot list folder: {err.strerror}"))

    for folder, subfolders, files in os.walk(top, followlinks=True, onerror=on_error):
        relative = os.path.relpath(folder, top)
        prefix = "" if relative == "." else printable(relative).replace(os.sep, "/") + "/"
        here = os.path.realpath(folder)
        for name in sorted(subfolders):
            real = os.path.realpath(os.path.join(folder, name))
            # A link to this folder or one above it never ends; a second path to a listed folder repeats it.
            if real in seen or here == real or here.startswith(real.rstrip(os.sep) + os.sep):
                reason = f"symbolic link loop: points to {printable(real)}, which is listed already or above it"
                found.append(Listed(prefix + printable(name) + "/", reason))
                subfolders.remove(name)
            seen.add(real)
        for name in sorted(files):
            raw = os.path.relpath(os.path.join(folder, name), top).replace(os.sep, "/")
            found.append(Listed(printable(raw), "" if printable(raw) == raw else "file name is not valid UTF-8"))
    return sorted(found, key=lambda f: f.relpath)


def _remote_files(top: str) -> list[Listed]:
    found = []
    for folder, _, files in tf.io.gfile.walk(top):
        relative = folder.rstrip("/")[len(top.rstrip("/")) :].strip("/")
        found += [Listed(f"{relative}/{name}" if relative else name) for name in files]
    return sorted(found, key=lambda f: f.relpath)


def list_files(top: str) -> list[Listed]:
    """Every entry under `top` that is not a folder (recursively, following links to folders once),
    sorted, with the reason when it cannot be read. Local paths via the OS, gs:// and other TF filesystems
    via tf.io.gfile."""
    return _local_files(top) if is_local(top) else _remote_files(top)


def _local_reason(path: str, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "symbolic link loop"
    if err.errno == errno.ENOENT and os.path.islink(path):
        return f"broken symbolic link to {printable(os.readlink(path))}"
    if err.errno == errno.ENOENT:
        return "file disappeared after it was listed"
    if err.errno == errno.EACCES:
        return "cannot read: permission denied"
    return f"cannot read: {err.strerror or err}"


def file_size(path: str) -> int:
    """Size in bytes of a readable regular file; raises UnreadableFileError saying why not."""
    if not is_local(path):
        try:
            return tf.io.gfile.stat(path).length
        except tf.errors.OpError as err:
            raise UnreadableFileError(f"cannot read: {err.message}") from None
    try:
        info = os.stat(path)
    except OSError as err:
        raise UnreadableFileError(_local_reason(path, err)) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "FIFO" if stat.S_ISFIFO(info.st_mode) else "socket" if stat.S_ISSOCK(info.st_mode) else "device or special file"
        raise UnreadableFileError(f"not a regular file ({kind})")
    return info.st_size


def read_file(path: str) -> bytes:
    """The bytes of a file checked by `file_size`; raises UnreadableFileError saying why they cannot be read."""
    if not is_local(path):
        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                return f.read()
        except tf.errors.OpError as err:
            raise UnreadableFileError(f"cannot read: {err.message}") from None
    try:
        # O_NONBLOCK: a file replaced by a FIFO after the size check must not block the reader.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as f:
            return f.read()
    except OSError as err:
        raise UnreadableFileError(_local_reason(path, err)) from None
