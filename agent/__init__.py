"""The gridmeter edge agent: reads meters over Modbus, signs each reading, stores it in SQLite and publishes
it over MQTT until the gateway acknowledges it durably. See README.md ("Agent").

The names below are the package's public API. They are imported lazily (PEP 562) so that `import agent.keys`
(provisioning) does not pull in pymodbus, paho and aiohttp.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AgentConfig": "agent.config", "ConfigError": "agent.config", "load_config": "agent.config",
    "parse_config": "agent.config", "build_specs": "agent.config",
    "KeyFileError": "agent.keys", "create_key_file": "agent.keys", "load_key_file": "agent.keys",
    "write_public_key": "agent.keys",
    "Store": "agent.store", "StoreError": "agent.store", "StoreFullError": "agent.store",
    "AckRejectedError": "agent.store",
    "Publisher": "agent.publisher",
    "AgentService": "agent.service", "build_service": "agent.service",
    "ClockProbe": "agent.clock", "ClockState": "agent.clock",
    "Baseline": "agent.plausibility", "Verdict": "agent.plausibility", "check_counters": "agent.plausibility",
    "BusSpec": "agent.bus", "BusError": "agent.bus", "open_bus": "agent.bus",
    "MeterSpec": "agent.poller", "MeterSample": "agent.poller", "MeterReadError": "agent.poller",
    "Poller": "agent.poller",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
