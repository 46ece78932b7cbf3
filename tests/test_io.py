"""SHA256SUMS: every file of a stored folder checked before it is read, and the listing itself tamper-evident."""

import logging
import shutil
import subprocess

import pytest

from lib.io import SUMS_FILE, ChecksumError, file_sha256, read_sums, verify_sums, write_sums


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "stored"
    (root / "sub").mkdir(parents=True)
    (root / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (root / "sub" / "config.json").write_text('{"scale": 1.0}')
    write_sums(root)
    return root


def test_lists_every_file_in_sha256sum_format(folder):
    assert read_sums(folder) == {name: file_sha256(folder / name) for name in ("sub/config.json", "weights.bin")}
    verify_sums(folder, None, "test")
    verify_sums(folder, ["sub/config.json"], "test")
    if shutil.which("sha256sum"):  # the same file checks by hand
        assert subprocess.run(["sha256sum", "--quiet", "-c", SUMS_FILE], cwd=folder).returncode == 0


def test_a_changed_file_is_named_with_the_listing(folder):
    (folder / "sub" / "config.json").write_text('{"scale": 5.0}')  # one bit: '1' -> '5'
    with pytest.raises(ChecksumError, match=rf"{folder}/sub/config.json: sha256 mismatch: {folder}/{SUMS_FILE}"):
        verify_sums(folder, None, "test")
    verify_sums(folder, ["weights.bin"], "test")  # only the files asked for are read


@pytest.mark.parametrize("offset", range(0, 200, 7))
def test_any_flipped_bit_in_the_listing_is_an_error_naming_it(folder, offset):
    data = bytearray((folder / SUMS_FILE).read_bytes())
    data[offset % len(data)] ^= 1 << (offset % 8)
    (folder / SUMS_FILE).write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=str(folder / SUMS_FILE)):
        verify_sums(folder, None, "test")


def test_a_missing_or_unlisted_file_is_refused(folder):
    with pytest.raises(ChecksumError, match=rf"{folder}/other.bin: not listed in {folder}/{SUMS_FILE}"):
        verify_sums(folder, ["other.bin"], "test")
    (folder / "weights.bin").unlink()
    with pytest.raises(ChecksumError, match=rf"{folder}/weights.bin: listed in {folder}/{SUMS_FILE} but missing"):
        verify_sums(folder, None, "test")


def test_a_folder_without_a_listing_is_read_unchecked_with_one_warning(folder, caplog):
    (folder / SUMS_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="lib.io"):
        verify_sums(folder, None, "ingest")
        verify_sums(folder, ["weights.bin"], "ingest")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and str(folder) in warnings[0] and "re-run the ingest stage" in warnings[0]
