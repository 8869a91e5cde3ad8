"""The config files of a testbed.stack run's processes (agent.toml, gateway.toml), as an installer would write them.

What lives where: testbed.stack starts the processes and registers the meters; this module writes what they read at
start (ports, keys, buses, meters, the stack's options). A function of a started Stack (brokers, ports and meter
servers are up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from testbed.stack import Stack

DASHBOARD_TOKEN = "stack-dashboard-token-0123456789"  # local only; at least 16 characters


def write_configs(self: Stack) -> None:
    """gateway.toml and agent.toml in the stack's work directory, from its options, ports and buses."""
    import tomli_w

    from oracle_interface.layout import DEVNET_PROGRAM_ID  # what `chain serve` loads the program at by default

    assert self.broker is not None
    o = self.opts
    gw = {
        "gateway": {"state_dir": str(self.work / "gateway"), "ack_key_file": str(self.work / "gateway.key"),
                    "verify_workers": o.gateway_verify_workers},
        "chain": {"rpc_url": self.rpc_url, "program_id": DEVNET_PROGRAM_ID,
                  "authority_key_file": str(self.work / "chain-bridge.json"),
                  "submit_interval_s": o.submit_interval_s, "max_backoff_s": 5.0},
        "mqtt": {"port": self.broker.port, "client_id": "gridmeter-stack-gateway"},
        "dashboard": {"listen": f"127.0.0.1:{self.dash_port}", "token": DASHBOARD_TOKEN},
        "limits": {"min_read_spacing_ms": o.min_read_spacing_ms},
        "intervals": {"epoch_s": o.epoch_s},
    }
    buses: list[dict[str, Any]] = []
    if self.rtu is not None:
        buses.append({"name": "rs485-0", "kind": "rtu", "port": self.rtu.client_port, "baudrate": 9600,
                      "parity": "N", "stopbits": 1, "timeout_s": o.rtu_timeout_s})
    if self.tcp is not None:
        buses.append({"name": "tcp-0", "kind": "tcp", "host": "127.0.0.1", "tcp_port": self.tcp.port})
    agent: dict[str, Any] = {
        "agent": {"state_dir": str(self.agent_state), "key_file": str(self.work / "device.key"),
                  "poll_interval_s": o.poll_interval_s},
        "clock": {"check": "always-synced"},  # a test box may not run NTP; production uses "auto"
        "mqtt": {"port": self.broker.port, "client_id": "gridmeter-stack-agent",
                 "gateway_public_key": self.gateway_key.public_key.hex(), "ack_timeout_s": o.ack_timeout_s,
                 "reconnect_min_s": o.agent_reconnect_s[0], "reconnect_max_s": o.agent_reconnect_s[1]},
        "store": {"flush_interval_ms": o.flush_interval_ms, "max_readings": o.store_max_readings},
        "status": {"listen": f"127.0.0.1:{self.status_port}"},
        "buses": buses,
        "meters": [{"meter_id": m.meter_id, "bus": "rs485-0" if m.link == "rtu" else "tcp-0",
                    "unit_id": m.unit_id, "profile": m.profile} for m in self.meters],
    }
    (self.work / "gateway.toml").write_text(tomli_w.dumps(gw))
    (self.work / "agent.toml").write_text(tomli_w.dumps(agent))
