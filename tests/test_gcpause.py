"""Handing the C heap's free pages back after a full sync, and only then."""

from __future__ import annotations

import pytest
from agentrig import Harness
from builders import endpoint_slice, service

from ipvsproxy import agent as agent_module
from ipvsproxy import gcpause


def test_release_asks_the_c_library_to_trim_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    pads: list[int] = []
    monkeypatch.setattr(gcpause, "_TRIM", lambda pad: pads.append(pad) or 1)
    assert gcpause.release_free_memory() is True
    assert pads == [0]  # keep no free pages at the top of the heap either
    monkeypatch.setattr(gcpause, "_TRIM", None)  # a C library without malloc_trim
    assert gcpause.release_free_memory() is False


def test_glibc_trim_is_found_and_callable() -> None:
    trim = gcpause._malloc_trim()
    assert trim is not None, "this test machine runs glibc"
    assert trim(0) in (0, 1)


def test_full_syncs_release_memory_partial_ones_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    releases: list[str] = []
    monkeypatch.setattr(agent_module, "release_free_memory", lambda: releases.append("x"))
    h = Harness()
    h.start([service("web", "10.96.0.10")], [endpoint_slice("web", "10.244.1.1")])
    h.step()
    assert h.agent.last is not None and h.agent.last.full and releases == ["x"]
    h.put(endpoint_slice("web", "10.244.1.2"))
    h.step()
    assert h.agent.last is not None and not h.agent.last.full and releases == ["x"]
    h.clock.t += 30  # the sync period: a periodic full sync
    assert h.step()
    assert h.agent.last is not None and h.agent.last.full and releases == ["x", "x"]
