"""Benchmark files store integer tensors compactly, read them back exactly, and refuse non-integers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from w2e.formats.benchmark_file import BenchmarkData, load_benchmark, save_benchmark


def _data(columns: dict[str, np.ndarray]) -> BenchmarkData:
    n = 4
    return BenchmarkData(images=np.arange(n * 9, dtype=np.uint8).reshape(n, 3, 3), labels=np.array([0, 129, 5, 7]),
                         groups=np.array([0, 1, -1, -2]), group_names=["a", "b"], info={"note": "x"}, columns=columns)


def test_integer_tensors_are_stored_in_the_smallest_type_and_read_back_as_int64(tmp_path) -> None:
    columns = {"shift": np.array([-1, 0, 1, -1]), "font": np.array([0, 300, 816, 2]),
               "index": np.array([0, 70_000, 299_999, 5]), "huge": np.array([0, 2**40, -(2**35), 1])}
    path = tmp_path / "benchmark.safetensors"
    save_benchmark(path, _data(columns))
    with safe_open(str(path), "np") as handle:
        stored = {name: handle.get_tensor(name).dtype for name in handle.keys()}
    assert stored == {"images": np.uint8, "labels": np.int16, "groups": np.int8, "shift": np.int8,
                      "font": np.int16, "index": np.int32, "huge": np.int64}
    back = load_benchmark(path)
    assert back.labels.dtype == back.groups.dtype == np.int64
    np.testing.assert_array_equal(back.labels, [0, 129, 5, 7])
    for name, column in columns.items():
        assert back.columns[name].dtype == np.int64
        np.testing.assert_array_equal(back.columns[name], column)


def test_a_file_with_non_integer_labels_is_refused(tmp_path) -> None:
    path = tmp_path / "benchmark.safetensors"
    save_file({"images": np.zeros((2, 3, 3), np.uint8), "labels": np.array([0.5, 1.0], np.float32),
               "groups": np.zeros(2, np.int64)}, str(path), metadata={"info": json.dumps({"group_names": []})})
    with pytest.raises(ValueError, match="not integers"):
        load_benchmark(path)
