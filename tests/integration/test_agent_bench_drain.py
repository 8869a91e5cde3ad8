"""Smoke test of `python -m bench drain` on a small backlog (the speed figure itself is the bench's job)."""

from __future__ import annotations

import argparse

import pytest

from bench import drain

pytestmark = pytest.mark.integration


def test_drain_bench_runs_and_verifies_everything() -> None:
    result = drain.run(argparse.Namespace(readings=2000, meters=2, batch_max=100, inflight=8))
    assert result["readings"] == 2000 and result["verified_readings"] == 2000
    assert result["all_contiguous"] is True
    assert result["bad_signatures"] == 0 and result["duplicates"] == 0
    assert result["readings_per_s"] > 0
