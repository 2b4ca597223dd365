"""The binary layout of notification batches round-trips and rejects the unknown."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.dynamodb.batches import BatchEntry, decode_batch, encode_batch

entries = st.lists(
    st.builds(
        BatchEntry,
        st.text(max_size=40),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.text(max_size=80),
        st.none() | st.binary(max_size=300),
    ),
    max_size=98,
)


@given(entries)
def test_batches_round_trip(batch: list[BatchEntry]) -> None:
    assert decode_batch(encode_batch(batch)) == batch


def test_unknown_format_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="Upgrade ledger"):
        decode_batch(b"\x02")
