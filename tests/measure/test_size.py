"""Bytes on disk, raw and compressed."""

from __future__ import annotations

import pytest

from slimtorch.errors import ArtifactError
from slimtorch.measure import compressed_bytes, dir_size_bytes


def test_dir_size_is_the_sum_of_its_files(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_bytes(b"y" * 23)
    assert dir_size_bytes(tmp_path) == 123
    assert dir_size_bytes(tmp_path / "a.bin") == 100


def test_zeros_compress_far_better_than_noise(tmp_path):
    import os

    (tmp_path / "zeros").mkdir()
    (tmp_path / "noise").mkdir()
    (tmp_path / "zeros" / "model.safetensors").write_bytes(bytes(100_000))
    (tmp_path / "noise" / "model.safetensors").write_bytes(os.urandom(100_000))
    assert compressed_bytes(tmp_path / "zeros") < 1_000
    assert compressed_bytes(tmp_path / "noise") > 99_000
    assert compressed_bytes(tmp_path / "zeros", method="lzma") < 1_000


def test_only_weight_files_are_compressed(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(bytes(10))
    (tmp_path / "slimtorch.json").write_bytes(b"{}" * 5000)
    assert compressed_bytes(tmp_path) < 50


def test_missing_artifact_raises(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist. Save the model there first"):
        dir_size_bytes(tmp_path / "nope")
