"""Every kind of bad input is rejected with a reason; odd modes are converted; nothing is lost."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import tensorflow as tf
from PIL import Image

from components.image_verification import (
    Candidate,
    ImageRecord,
    IngestionError,
    Rejection,
    find_candidates,
    fingerprint,
    verify_image,
)
from contracts.data_roots import DataRoot
from contracts.image_check import Limits
from tests.helpers import CLASSES, REAL_DATA, image_bytes, png_header, real_files

LIMITS = Limits(max_pixels=4_000_000, min_side=32, max_file_bytes=5_000_000)


def candidate(root: Path, relpath: str, label: str | None, site: str | None = "lab") -> Candidate:
    return Candidate(DataRoot(str(root)), relpath, label, site)


def verify(root: Path, name: str, data: bytes, label: str | None = "myeloblast"):
    folder = label or "unknown_cells"
    (root / folder).mkdir(exist_ok=True)
    (root / folder / name).write_bytes(data)
    return verify_image(candidate(root, f"{folder}/{name}", label), LIMITS)


def test_real_jpeg_is_kept_byte_for_byte(tmp_path):
    source = real_files("myeloblast", 1)[0]
    record = verify(tmp_path, "cell.jpg", source.read_bytes())
    assert isinstance(record, ImageRecord)
    assert record.image_bytes == source.read_bytes()
    assert (record.width, record.height) == (400, 400)
    assert record.converted_from == ""
    assert len(record.sha256) == 64


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("empty.jpg", b"", "empty file (0 bytes)"),
        ("notes.jpg", b"this is not an image at all", "not an image"),
        ("anim.gif", image_bytes("GIF", "P"), "unsupported image format GIF"),
        ("tiny.png", image_bytes("PNG", size=(8, 8)), "image too small: 8x8"),
        ("header-only.png", png_header(0, 0), "corrupt image header"),
    ],
)
def test_bad_files_are_rejected_with_reason(tmp_path, name, data, reason):
    result = verify(tmp_path, name, data)
    assert isinstance(result, Rejection)
    assert result.relpath == f"{tmp_path.name}/myeloblast/{name}"
    assert reason in result.reason


def test_truncated_jpeg_is_rejected(tmp_path):
    data = real_files("basophil", 1)[0].read_bytes()
    result = verify(tmp_path, "cut.jpg", data[: len(data) // 2])
    assert isinstance(result, Rejection)
    assert "truncated or corrupt JPEG" in result.reason


def test_decompression_bomb_is_rejected_before_decoding(tmp_path):
    buffer = io.BytesIO()
    Image.new("L", (3000, 2000)).save(buffer, format="PNG")  # 6 MP > 4 MP limit, tiny file
    result = verify(tmp_path, "bomb.png", buffer.getvalue())
    assert isinstance(result, Rejection)
    assert "decompression bomb: 3000x2000 = 6000000 pixels" in result.reason


def test_oversized_file_is_rejected(tmp_path):
    limits = Limits(max_pixels=LIMITS.max_pixels, min_side=32, max_file_bytes=100)
    (tmp_path / "myeloblast").mkdir()
    (tmp_path / "myeloblast" / "big.png").write_bytes(image_bytes("PNG"))
    result = verify_image(candidate(tmp_path, "myeloblast/big.png", "myeloblast"), limits)
    assert isinstance(result, Rejection) and "file too large" in result.reason


def test_unknown_class_folder_is_rejected(tmp_path):
    result = verify(tmp_path, "a.jpg", image_bytes(), label=None)
    assert isinstance(result, Rejection)
    assert result.reason == "unknown class folder 'unknown_cells'"


@pytest.mark.parametrize(
    "fmt, mode",
    [("PNG", "L"), ("PNG", "RGBA"), ("JPEG", "CMYK"), ("PNG", "I;16"), ("BMP", "RGB"), ("TIFF", "RGB"), ("PNG", "P")],
)
def test_odd_modes_are_converted_to_rgb_png(tmp_path, fmt, mode):
    record = verify(tmp_path, f"odd.{fmt.lower()}", image_bytes(fmt, mode, size=(48, 40)))
    assert isinstance(record, ImageRecord), record
    assert record.converted_from == f"{fmt} {Image.open(io.BytesIO(image_bytes(fmt, mode, (48, 40)))).mode}"
    image = Image.open(io.BytesIO(record.image_bytes))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (48, 40))


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    buffer = io.BytesIO()
    Image.new("I;16", (40, 40), 65535).save(buffer, format="PNG")
    record = verify(tmp_path, "deep.png", buffer.getvalue())
    assert Image.open(io.BytesIO(record.image_bytes)).getpixel((0, 0)) == (255, 255, 255)


def test_transparent_pixels_become_white(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGBA", (40, 40), (10, 20, 30, 0)).save(buffer, format="PNG")
    record = verify(tmp_path, "clear.png", buffer.getvalue())
    assert Image.open(io.BytesIO(record.image_bytes)).getpixel((0, 0)) == (255, 255, 255)


def test_find_candidates_lists_class_folders_recursively_and_loose_files(generated_root):
    (generated_root / "README.md").write_text("docs")
    (generated_root / "myeloblast" / "2024-01").mkdir()
    (generated_root / "myeloblast" / "2024-01" / "x.jpg").write_bytes(image_bytes())
    (generated_root / "lymphocyte").mkdir()
    (generated_root / "lymphocyte" / "l.jpg").write_bytes(image_bytes())
    root = DataRoot(str(generated_root))
    candidates, loose = find_candidates([root], CLASSES)
    assert loose == [f"{root.name}/README.md"]
    assert len(candidates) == 5 * 10 + 2
    # No MANIFEST.csv and no site in the config: the root is one site, named after its folder.
    assert Candidate(root, "myeloblast/2024-01/x.jpg", "myeloblast", root.name) in candidates
    assert Candidate(root, "lymphocyte/l.jpg", None, root.name) in candidates


def test_missing_class_folder_stops_ingestion(generated_root):
    for path in (generated_root / "monocyte").iterdir():
        path.unlink()
    (generated_root / "monocyte").rmdir()
    with pytest.raises(IngestionError, match="class folders missing: monocyte"):
        find_candidates([DataRoot(str(generated_root))], CLASSES)


def test_a_missing_root_among_several_is_named(generated_root, tmp_path):
    with pytest.raises(IngestionError, match="data root .*does-not-exist does not exist"):
        find_candidates([DataRoot(str(generated_root)), DataRoot(str(tmp_path / "does-not-exist"))], CLASSES)


def test_fingerprint_changes_when_a_file_or_a_site_changes(generated_root):
    roots = [DataRoot(str(generated_root))]
    before = fingerprint(roots)
    assert fingerprint(roots) == before
    assert fingerprint([DataRoot(str(generated_root), "lyon")]) != before
    (generated_root / "basophil" / "new.jpg").write_bytes(image_bytes(seed=999))
    assert fingerprint(roots) != before


def test_site_comes_from_the_manifest_then_the_config_then_the_folder_name(tmp_path):
    real = DataRoot(str(REAL_DATA))
    sites = {c.relpath: c.site for c in find_candidates([real], CLASSES)[0]}
    assert {sites[f"{c}/{real_files(c, 1)[0].name}"] for c in ("basophil", "myeloblast")} == {"barcelona", "munich"}

    root = tmp_path / "lab"
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        (root / name / "a.jpg").write_bytes(image_bytes())
    (root / "MANIFEST.csv").write_text("class,file,site\nbasophil,basophil/a.jpg,lyon\n")
    found = {c.relpath: c.site for c in find_candidates([DataRoot(str(root), "paris")], CLASSES)[0]}
    assert found["basophil/a.jpg"] == "lyon" and found["monocyte/a.jpg"] == "paris"
    # A manifest with sites that does not list a file, and no site in the config: the file has no site.
    unlisted = {c.relpath: c for c in find_candidates([DataRoot(str(root))], CLASSES)[0]}
    assert unlisted["basophil/a.jpg"].site == "lyon" and unlisted["monocyte/a.jpg"].site is None
    rejection = verify_image(unlisted["monocyte/a.jpg"], LIMITS)
    assert isinstance(rejection, Rejection) and rejection.relpath == "lab/monocyte/a.jpg"
    assert rejection.reason.startswith("no site: not listed in lab/MANIFEST.csv")


def test_a_data_root_on_another_filesystem_is_read_through_tf_gfile():
    # ram:// is TensorFlow's in-memory filesystem; gs:// and s3:// go through the same tf.io.gfile calls.
    root = "ram://bloodcell-test-data"
    for k, name in enumerate(CLASSES):
        tf.io.gfile.makedirs(f"{root}/{name}/batch1")
        for i in range(2):
            with tf.io.gfile.GFile(f"{root}/{name}/batch1/{i}.jpg", "wb") as f:
                f.write(image_bytes(seed=10 * k + i))
    with tf.io.gfile.GFile(f"{root}/README.md", "w") as f:
        f.write("docs")
    roots = [DataRoot(root, "tokyo")]
    candidates, loose = find_candidates(roots, CLASSES)
    assert loose == ["bloodcell-test-data/README.md"] and len(candidates) == 2 * len(CLASSES)
    assert candidates[0] == Candidate(roots[0], "basophil/batch1/0.jpg", "basophil", "tokyo")
    record = verify_image(candidates[0], LIMITS)
    assert isinstance(record, ImageRecord) and record.image_bytes == image_bytes(seed=0)
    assert (record.relpath, record.site) == ("bloodcell-test-data/basophil/batch1/0.jpg", "tokyo")
    before = fingerprint(roots)
    with tf.io.gfile.GFile(f"{root}/basophil/batch1/new.jpg", "wb") as f:
        f.write(image_bytes(seed=99))
    assert fingerprint(roots) != before
