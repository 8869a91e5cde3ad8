"""Run `gridmeter agent run` as a real subprocess for integration tests (so it can be SIGKILLed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agent.keys import create_key_file
from protocol.signing import SigningKey
from testbed.broker import Broker
from testbed.ports import free_port
from tests import polling


@dataclass
class MeterEntry:
    meter_id: str
    bus: str
    unit_id: int
    profile: str
    key_file: str = ""


@dataclass
class AgentSetup:
    workdir: Path
    broker: Broker
    gateway: SigningKey
    buses: list[dict[str, object]]
    meters: list[MeterEntry]
    poll_interval_s: float = 0.3
    ack_timeout_s: float = 3.0
    batch_max: int = 100
    flush_interval_ms: int = 100
    status_port: int = field(default_factory=free_port)
    keys: dict[str, SigningKey] = field(default_factory=dict)

    def write(self) -> Path:
        """Key files (0600) + agent.toml; returns the config path."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        default_key = self.workdir / "device.key"
        if not default_key.exists():
            create_key_file(default_key)
        from agent.keys import load_key_file

        for m in self.meters:
            path = self.workdir / (m.key_file or "device.key")
            if not path.exists():
                create_key_file(path)
            self.keys[m.meter_id] = load_key_file(path)
        lines = [
            "[agent]", f'state_dir = "{self.workdir / "state"}"', f'key_file = "{default_key}"',
            f"poll_interval_s = {self.poll_interval_s}",
            "[clock]", 'check = "always-synced"',
            "[mqtt]", f'host = "{self.broker.host}"', f"port = {self.broker.port}", 'client_id = "agent-it"',
            f'gateway_public_key = "{self.gateway.public_key.hex()}"', f"ack_timeout_s = {self.ack_timeout_s}",
            f"batch_max = {self.batch_max}", "reconnect_min_s = 0.1", "reconnect_max_s = 0.5",
            "[store]", f"flush_interval_ms = {self.flush_interval_ms}",
            "[status]", f'listen = "127.0.0.1:{self.status_port}"',
        ]
        for b in self.buses:
            lines.append("[[buses]]")
            lines += [f"{k} = {_toml(v)}" for k, v in b.items()]
        for m in self.meters:
            lines += ["[[meters]]", f'meter_id = "{m.meter_id}"', f'bus = "{m.bus}"', f"unit_id = {m.unit_id}",
                      f'profile = "{m.profile}"']
            if m.key_file:
                lines.append(f'key_file = "{self.workdir / m.key_file}"')
        path = self.workdir / "agent.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    @property
    def db_path(self) -> Path:
        return self.workdir / "state" / "agent.sqlite"


def _toml(v: object) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class AgentProcess:
    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config, self.log, self.extra_env = config, log, dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log, "ab") as log:
            log.write(f"\n==== start {self.starts} ====\n".encode())
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            env.pop("NOTIFY_SOCKET", None)
            env.update(self.extra_env)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gridmeter.cli", "agent", "run", "--config", str(self.config)],
                stdout=log, stderr=log, env=env,
            )
        self.starts += 1

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"agent did not stop on SIGTERM within {timeout_s}s; log:\n{self.tail()}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def close(self) -> None:
        self.kill()


def wait_for(cond, timeout_s: float, what: str, proc: AgentProcess | None = None) -> None:  # type: ignore[no-untyped-def]
    """tests.polling.wait_for that also stops when the agent process exits, with the agent's log tail."""

    def exited() -> str | None:
        if proc is not None and proc.proc is not None and proc.proc.poll() is not None:
            return f"agent exited ({proc.proc.returncode})"
        return None

    polling.wait_for(cond, timeout_s, what, abort=exited, detail=(proc.tail if proc is not None else None),
                     poll_s=0.05)
