"""The legacy table fingerprint's normalisation: counters zeroed, everything else kept.

The kernel tests (tests/kernel/test_observe_readers_kernel.py) prove the fingerprint against
real tables; these check the walk over entries on built blobs, including broken ones.
"""

from __future__ import annotations

import struct

import pytest

from ipvsproxy.core.model import IPFamily
from ipvsproxy.dataplane.xtables_stamp import normalise

# (offset of next_offset, offset of the counters, size of the entry header)
LAYOUT = {IPFamily.V4: (90, 96, 112), IPFamily.V6: (142, 152, 168)}


def entry(family: IPFamily, fill: int, packets: int, size: int = 40) -> bytes:
    """An entry header and ``size`` bytes of match/target data, all set to ``fill``."""
    next_at, counters_at, header = LAYOUT[family]
    raw = bytearray([fill]) * (header + size)
    struct.pack_into("=H", raw, next_at, header + size)
    struct.pack_into("=QQ", raw, counters_at, packets, packets * 60)
    return bytes(raw)


@pytest.mark.parametrize("family", list(IPFamily))
def test_counters_are_zeroed_and_nothing_else(family: IPFamily) -> None:
    quiet = entry(family, 1, 0) + entry(family, 2, 0)
    busy = entry(family, 1, 5) + entry(family, 2, 99)
    other = entry(family, 1, 5) + entry(family, 3, 99)
    assert normalise(busy, family) == normalise(quiet, family)
    assert normalise(other, family) != normalise(busy, family)
    result = normalise(busy, family)
    assert result is not None and len(result) == len(busy)
    counters_at = LAYOUT[family][1]
    assert result[counters_at : counters_at + 16] == bytes(16)


@pytest.mark.parametrize("family", list(IPFamily))
def test_entries_that_do_not_tile_the_blob_give_none(family: IPFamily) -> None:
    good = entry(family, 1, 1) + entry(family, 2, 2)
    assert normalise(good[:-1], family) is None  # the last entry overruns
    assert normalise(good + b"\0" * 8, family) is None  # a tail shorter than an entry
    broken = bytearray(good)
    struct.pack_into("=H", broken, LAYOUT[family][0], 0)  # next_offset 0: no progress
    assert normalise(bytes(broken), family) is None
    assert normalise(b"", family) == b""
