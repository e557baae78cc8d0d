"""A safetensors header entry is accepted in a few steps when it is the usual one (plugins/safetensors_format.py,
`_tensor_entry`); every other goes through each check in order. Both paths must accept exactly the same entries
with the same result, and the full path must give each refusal its own message."""

from __future__ import annotations

import itertools
import json

import pytest
from vaereg_plugins import safetensors_format as sf

from vaereg.hookspecs import DTYPE_BITS, ModelFormatError

U64 = 2**64 - 1


def entry_of(fields: dict) -> sf._JsonObject:
    """The entry as the header's JSON parser builds it."""
    return json.loads(json.dumps(fields), object_pairs_hook=sf._json_object)


def outcome(fn, entry):
    try:
        return fn("t", entry)
    except ModelFormatError as exc:
        return ("refused", str(exc))


DTYPES = [*DTYPE_BITS, "F17", 3, None]
SHAPES = [[], [0], [3, 4], [2**32, 2**32], [2**63, 4], [U64], [U64 + 1], [-1], [True], [2.0], "3", [1] * 65,
          [1] * 64]
OFFSETS = [[0, 0], [0, 24], [0, 48], [5, 29], [10, 5], [0], [0, 1, 2], [-1, 23], [0, U64 + 1], [True, 24],
           [0, 2**64 - 1], "0,24", None]


def test_every_combination_gets_the_full_checks_answer():
    checked = 0
    for dtype, shape, offsets in itertools.product(DTYPES, SHAPES, OFFSETS):
        fields = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        entry = entry_of(fields)
        assert outcome(sf._tensor_entry, entry) == outcome(sf._checked_entry, entry), fields
        checked += 1
    assert checked == len(DTYPES) * len(SHAPES) * len(OFFSETS)


@pytest.mark.parametrize(
    "fields",
    [
        {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "extra": 1},  # an extra field: accepted
        {"dtype": "F32", "shape": [2]},  # a field missing
        {"dtype": "F32", "shape": [2], "offsets": [0, 8]},  # three fields, not the three
        {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]},  # sub-byte: 12 bits, not whole bytes
        {"dtype": "F4", "shape": [3], "data_offsets": [0, 1]},
        {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]},
    ],
)
def test_unusual_entries_get_the_full_checks_answer(fields):
    entry = entry_of(fields)
    assert outcome(sf._tensor_entry, entry) == outcome(sf._checked_entry, entry)


def test_duplicate_fields_and_non_objects_are_refused_as_before():
    duplicate = json.loads('{"dtype": "F32", "dtype": "F16", "shape": [1]}', object_pairs_hook=sf._json_object)
    assert outcome(sf._tensor_entry, duplicate) == ("refused", "tensor 't': field 'dtype' appears twice")
    assert outcome(sf._tensor_entry, [1, 2]) == ("refused", "tensor 't': entry is a JSON array, not an object")


def test_the_usual_entry_is_read_as_before():
    info, span = sf._tensor_entry("w", entry_of({"dtype": "F16", "shape": [3, 4], "data_offsets": [8, 32]}))
    assert (info.name, info.dtype, info.shape, span) == ("w", "F16", (3, 4), (8, 32))
