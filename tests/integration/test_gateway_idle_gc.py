"""An idle gateway intake collects cyclic garbage (the RSS growth at household load).

The intake raises CPython's young-generation threshold to 50,000 allocations for throughput; at a few readings a
second that takes over an hour, and the cycles paho makes per message piled up (~0.2 MB/min RSS). The idle worker
now runs a young collection every DEFAULT_IDLE_GC_S (shortened here) and a full one every DEFAULT_IDLE_FULL_GC."""

from __future__ import annotations

import gc
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import gateway.intake.mqtt as intake_mod
from gateway.config import MqttSection
from gateway.intake.acceptance import Acceptance, IngressLimit
from gateway.intake.checks import Limits
from gateway.intake.mqtt import Intake
from gateway.metrics import Metrics
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from protocol import SigningKey
from testbed.broker import Broker

pytestmark = pytest.mark.integration


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_idle_intake_collects_cycles_although_the_threshold_is_raised(broker: Broker, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_mod, "DEFAULT_IDLE_GC_S", 0.3)
    monkeypatch.setattr(intake_mod, "DEFAULT_IDLE_FULL_GC", 2)
    store, registry, pool = Store(tmp_path / "g.sqlite"), Registry(tmp_path / "r.sqlite"), ThreadPoolExecutor(1)
    intake = Intake(MqttSection(port=broker.port, client_id="gw-gc"),
                    Acceptance(store, registry, Limits(), IngressLimit(), Metrics(), pool), SigningKey.generate(),
                    Metrics())
    intake.start()
    try:
        intake.wait_ready()
        assert gc.get_threshold()[0] == intake_mod.DEFAULT_GC_THRESHOLD  # automatic young GC is rare now
        old = Node()
        gc.collect()  # `old` survives into the oldest generation: only a full collection reaches it there
        young = Node()
        freed = {"young": False, "old": False}
        weakref.finalize(young, freed.__setitem__, "young", True)
        weakref.finalize(old, freed.__setitem__, "old", True)
        del young, old
        deadline = time.monotonic() + 20
        while not all(freed.values()):
            assert time.monotonic() < deadline, f"cycles not collected by the idle intake: {freed}"
            time.sleep(0.05)
    finally:
        intake.stop()
        pool.shutdown()
        store.close()
        registry.close()
