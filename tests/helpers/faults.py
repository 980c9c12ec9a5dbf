"""A catalogue of ingestion faults: builds a data root where each fault sits beside real images, with the
outcome ingestion must give each one. Used by tests/test_ingestion_faults.py and benchmarks/faults.py."""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.helpers import CLASSES, REAL_DATA, bomb_png, image_bytes, real_files

MAX_FILE_BYTES = 2_000_000  # the catalogue's limit: the "file too large" fault is just over it
ROOT_NAME = "faulty"
# Without CAP_DAC_OVERRIDE even root is refused a file without read permission: the permission faults
# are real for root too.
DROP_FILE_CAPABILITIES = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str  # what is wrong
    file: str  # as the report names it: <root name>/<class>/<file>
    outcome: str  # "rejected", "duplicate" or "ingested"
    reason: str = ""  # start of the rejection reason


def solid_png(width: int, height: int) -> bytes:
    """A valid PNG of one colour: a few kB on the wire, width x height pixels once decoded."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 140)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def endless_upload(total: int, chunk: int = 1024 * 1024):
    """A valid multipart body (field `files`, boundary `b`) whose one file streams `total` bytes in chunks,
    with no Content-Length: only counting the bytes as they arrive can stop it."""
    yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    for _ in range(total // chunk + 1):
        yield b"\xff" * chunk


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def build_faulty_root(top: Path, good_per_class: int = 6) -> tuple[Path, list[Fault]]:
    """A data root `top/faulty` with `good_per_class` real images per class and one file per fault kind.
    Returns the root and the faults (every fault file, with its expected outcome)."""
    root = top / ROOT_NAME
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for path in real_files(name, good_per_class):
            shutil.copy(path, root / name / path.name)
    (root / "README.md").write_text("a note beside the class folders, not an image\n")
    jpeg = real_files("monocyte", 1)[0].read_bytes()
    spare = real_files("erythroblast", good_per_class + 2)  # two images not already in the root
    faults: list[Fault] = []

    def fault(kind: str, relpath: str, outcome: str = "rejected", reason: str = "") -> Path:
        faults.append(Fault(kind, f"{ROOT_NAME}/{relpath}", outcome, reason))
        return root / relpath

    _write(fault("empty file", "basophil/empty.jpg", reason="empty file (0 bytes)"), b"")
    _write(fault("text named .jpg", "basophil/notes.jpg", reason="not an image"), b"cells counted by hand\n")
    _write(fault("truncated JPEG", "monocyte/cut.jpg", reason="truncated or corrupt JPEG"), jpeg[: len(jpeg) // 3])
    gif = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(gif, format="GIF")
    _write(fault("unsupported format (GIF)", "monocyte/cell.gif", reason="unsupported image format GIF"), gif.getvalue())
    _write(fault("decompression bomb (PNG 20000x20000)", "myeloblast/bomb.png", reason="decompression bomb"), bomb_png())
    _write(fault("image too small (8x8)", "myeloblast/tiny.png", reason="image too small"), image_bytes("PNG", size=(8, 8)))
    frames = io.BytesIO()
    Image.new("RGB", (64, 64)).save(frames, format="TIFF", save_all=True, append_images=[Image.new("RGB", (64, 64), "white")])
    _write(fault("multi-frame TIFF", "erythroblast/stack.tiff", reason="multi-frame TIFF"), frames.getvalue())
    _write(fault("file over max_file_bytes", "erythroblast/huge.png", reason="file too large"), os.urandom(MAX_FILE_BYTES + 1))
    corrupt = bytearray(image_bytes("PNG", seed=9))
    start = corrupt.index(b"IDAT") + 24
    corrupt[start : start + 64] = bytes(64)  # inside the compressed pixel data
    _write(fault("corrupt PNG data", "seg_neutrophil/crc.png", reason="truncated or corrupt PNG"), bytes(corrupt))
    os.symlink("/nonexistent/cell.jpg", fault("broken symbolic link", "basophil/gone.jpg", reason="broken symbolic link"))
    os.symlink("loop-b.jpg", fault("symbolic link loop (file)", "basophil/loop-a.jpg", reason="symbolic link loop"))
    os.symlink("loop-a.jpg", fault("symbolic link loop (file)", "basophil/loop-b.jpg", reason="symbolic link loop"))
    os.symlink("..", fault("symbolic link loop (folder)", "monocyte/up/", reason="symbolic link loop"))
    os.mkfifo(fault("FIFO", "myeloblast/pipe.jpg", reason="not a regular file (FIFO)"))
    name = b"seg_neutrophil/caf\xe9.jpg"  # Latin-1, not UTF-8
    fault("file name not UTF-8", "seg_neutrophil/caf\\xe9.jpg", reason="file name is not valid UTF-8")
    with open(os.path.join(os.fsencode(root), name), "wb") as f:
        f.write(image_bytes(seed=11))
    locked = fault("no read permission", "erythroblast/locked.jpg", reason="cannot read: permission denied")
    _write(locked, image_bytes(seed=12))
    locked.chmod(0)
    folder = root / "seg_neutrophil" / "private"
    _write(folder / "hidden.jpg", image_bytes(seed=13))
    fault("folder without permission", "seg_neutrophil/private/", reason="cannot list folder: Permission denied")
    folder.chmod(0)
    _write(fault("unknown class folder", "lymphocyte/x.jpg", reason="unknown class folder 'lymphocyte'"), image_bytes(seed=14))
    same = real_files("basophil", 1)[0]
    _write(fault("exact duplicate", "basophil/copy-of-first.jpg", "duplicate"), same.read_bytes())
    _write(fault("same bytes in two classes", "monocyte/clash.jpg", reason="label conflict: same bytes"), spare[-1].read_bytes())
    _write(
        fault("same bytes in two classes", "erythroblast/clash.jpg", reason="label conflict: same bytes"), spare[-1].read_bytes()
    )
    resized = io.BytesIO()
    with Image.open(spare[-2]) as original:
        original.resize((original.width // 2, original.height // 2)).save(resized, format="JPEG", quality=60)
    near = {"kind": "near-duplicate in another class", "reason": "label conflict: near-duplicate"}
    _write(fault(relpath="myeloblast/resized.jpg", **near), resized.getvalue())
    shutil.copy(spare[-2], fault(relpath=f"erythroblast/{spare[-2].name}", **near))
    resized_same = io.BytesIO()
    with Image.open(real_files("seg_neutrophil", 1)[0]) as original:
        original.resize((original.width * 3 // 4, original.height * 3 // 4)).save(resized_same, format="JPEG", quality=40)
    kept = fault("near-duplicate in one class (kept, same split)", "seg_neutrophil/resized.jpg", "ingested")
    _write(kept, resized_same.getvalue())
    rgba = io.BytesIO()
    with Image.open(real_files("basophil", 2)[1]) as original:
        original.convert("RGBA").save(rgba, format="TIFF")
    _write(fault("TIFF with alpha (converted)", "basophil/alpha.tiff", "ingested"), rgba.getvalue())
    return root, faults


def good_files(root: Path, faults: list[Fault]) -> list[str]:
    """The real images the catalogue copied that are no fault, as the report names them."""
    copied = [(name, p.name) for name in CLASSES for p in real_files(name, 1000) if (root / name / p.name).is_file()]
    return sorted({f"{ROOT_NAME}/{name}/{file}" for name, file in copied} - {f.file for f in faults})


def restore_permissions(root: Path) -> None:
    """Lets the temporary folder be deleted after the run."""
    for path in (root / "erythroblast" / "locked.jpg", root / "seg_neutrophil" / "private"):
        path.chmod(0o755)


def ingest_in_subprocess(root: Path, out: Path) -> subprocess.CompletedProcess:
    """Runs the real ingestion (`run_ingestion`, Beam) on `root` in a fresh process, without the root
    privilege of reading any file when the tests run as root."""
    code = (
        "import sys; from contracts.data_roots import DataRoot; from contracts.image_check import Limits;"
        "from components.image_example_gen import run_ingestion;"
        f"run_ingestion([DataRoot(sys.argv[1], 'lab')], {CLASSES!r}, Limits(40_000_000, 32, {MAX_FILE_BYTES}),"
        "{'train': 0.7, 'eval': 0.15, 'test': 0.15}, 42, '', sys.argv[2], sys.argv[2] + '/report.json')"
    )
    prefix = DROP_FILE_CAPABILITIES if os.geteuid() == 0 else []
    return subprocess.run([*prefix, sys.executable, "-c", code, str(root), str(out)], capture_output=True, text=True, timeout=600)


assert REAL_DATA.is_dir(), f"the real data folder {REAL_DATA} is missing"
