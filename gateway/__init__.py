"""The gridmeter gateway: verifies, checks and durably queues signed readings, then submits interval
readings to the GridTokenX oracle. See gateway/README.md.

The names below are the package's public API. They are imported lazily (PEP 562) so that `import gateway`
stays free of solana/paho until a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GatewayConfig": "gateway.config", "ConfigError": "gateway.config", "load_config": "gateway.config",
    "parse_config": "gateway.config",
    "Registry": "gateway.store.registry", "RegistryError": "gateway.registry", "Meter": "gateway.registry",
    "MeterStatus": "gateway.registry",
    "OracleLimits": "gateway.submit.intervals", "Planned": "gateway.submit.intervals",
    "PlanState": "gateway.submit.intervals", "Point": "gateway.submit.intervals", "plan": "gateway.submit.intervals",
    "oracle_verdict": "gateway.submit.intervals",
    "Submitter": "gateway.submit.submitter",
    "HttpIngest": "gateway.intake.http",
    "Dashboard": "gateway.web",
    "Gateway": "gateway.service", "run": "gateway.service",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
