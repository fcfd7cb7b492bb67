"""Fuzzing the IDX reader: mutated files give a clear DataError or valid arrays, never a crash."""
import gzip
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import DataError
from helpers import idx_bytes, read_images, read_labels

_IMAGES = idx_bytes(np.random.RandomState(0).randint(0, 256, size=(3, 28, 28)).astype(np.uint8))
_LABELS = idx_bytes(np.array([1, 9, 0], dtype=np.uint8))


def _mutate(raw, edits, cut, extra):
    raw = bytearray(raw)
    for position, value in edits:
        raw[position % len(raw)] = value
    return bytes(raw[:cut] if cut is not None else raw) + extra


_edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6)
_cut = st.one_of(st.none(), st.integers(0, len(_IMAGES)))
_extra = st.binary(max_size=16)


def _check(path, reader, raw):
    with open(path, "wb") as f:
        f.write(raw)
    try:
        array = reader(str(path))
    except DataError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert array.ndim == 2 if reader is read_images else array.ndim == 1
    if reader is read_images:
        assert array.shape[1] == 784 and array.dtype == np.uint8
    else:
        assert array.dtype == np.int32 and (
            array.size == 0 or 0 <= array.min() and array.max() <= 9
        )


_fuzz = settings(
    max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_fuzz
@given(edits=_edits, cut=_cut, extra=_extra, header_only=st.booleans())
def test_a_mutated_image_file_is_one_line_data_error_or_valid_arrays(
    tmp_path, edits, cut, extra, header_only
):
    edits = [(p % 16, v) for p, v in edits] if header_only else edits
    _check(tmp_path / "images", read_images, _mutate(_IMAGES, edits, cut, extra))


@_fuzz
@given(edits=_edits, cut=st.one_of(st.none(), st.integers(0, len(_LABELS))), extra=_extra)
def test_a_mutated_label_file_is_one_line_data_error_or_valid_arrays(tmp_path, edits, cut, extra):
    _check(tmp_path / "labels", read_labels, _mutate(_LABELS, edits, cut, extra))


@_fuzz
@given(edits=_edits, cut=st.one_of(st.none(), st.integers(0, 200)), extra=_extra)
def test_a_mutated_gzip_file_is_one_line_data_error_or_valid_arrays(tmp_path, edits, cut, extra):
    packed = gzip.compress(_IMAGES)
    _check(tmp_path / "images.gz", read_images, _mutate(packed, edits, cut, extra))
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]
