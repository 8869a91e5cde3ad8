"""A real mosquitto broker on a free 127.0.0.1 port, for tests, benches and the demo.

max_queued_messages is raised far above the default 1000 (which silently drops QoS 1 messages for a
slow or offline persistent subscriber); persistence is on so a restart keeps sessions; message_size_limit
bounds what one client can make the broker carry (DEFAULT_MESSAGE_SIZE_LIMIT).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from protocol.canonical import BROKER_MESSAGE_SIZE_LIMIT
from testbed.ports import free_port, wait_port

DEFAULT_MAX_QUEUED = 1_000_000
# mosquitto refuses (and drops) any PUBLISH whose payload is larger: a full batch (protocol MAX_BATCH_BYTES, ~315
# KiB) fits, a client cannot make the broker buffer or forward megabytes. provisioning prints the same bound.
DEFAULT_MESSAGE_SIZE_LIMIT = BROKER_MESSAGE_SIZE_LIMIT


def mosquitto_binary() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and os.path.exists(cand):
            return cand
    raise FileNotFoundError("mosquitto not installed: run scripts/test or scripts/demo (they install it)")


@dataclass
class Broker:
    """Start with `start()`, stop with `stop()`; also a context manager."""

    workdir: Path | None = None
    port: int = 0
    passwords: dict[str, str] = field(default_factory=dict)  # username -> password; empty = anonymous
    acl_lines: list[str] = field(default_factory=list)
    max_queued_messages: int = DEFAULT_MAX_QUEUED
    message_size_limit: int = DEFAULT_MESSAGE_SIZE_LIMIT
    extra_conf: list[str] = field(default_factory=list)
    _proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def start(self) -> Broker:
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gridmeter-broker-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        conf = [
            "per_listener_settings false",
            "persistence true",
            f"persistence_location {data}/",
            "autosave_interval 1",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            f"max_queued_messages {self.max_queued_messages}",
            "max_inflight_messages 0",
            f"message_size_limit {self.message_size_limit}",
            f"listener {self.port} 127.0.0.1",
        ]
        if os.geteuid() == 0:
            conf.insert(0, "user root")  # else mosquitto drops to 'mosquitto' and cannot read our temp dir
        if self.passwords:
            pw = self.workdir / "passwd"
            fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # clear text until hashed below
            with os.fdopen(fd, "w") as f:
                f.write("".join(f"{u}:{p}\n" for u, p in self.passwords.items()))
            subprocess.run(["mosquitto_passwd", "-U", str(pw)], check=True, capture_output=True)
            conf += ["allow_anonymous false", f"password_file {pw}"]
        else:
            conf.append("allow_anonymous true")
        if self.acl_lines:
            acl = self.workdir / "acl"
            acl.write_text("\n".join(self.acl_lines) + "\n")
            conf.append(f"acl_file {acl}")
        conf += self.extra_conf
        cfile = self.workdir / "mosquitto.conf"
        cfile.write_text("\n".join(conf) + "\n")
        log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115 - owned by the process lifetime
        self._proc = subprocess.Popen([mosquitto_binary(), "-c", str(cfile)], stdout=log, stderr=log)
        log.close()
        try:
            wait_port(self.port, 10.0)
        except TimeoutError as exc:
            self.stop()
            log_tail = (self.workdir / "mosquitto.log").read_text()[-2000:]
            raise RuntimeError(f"mosquitto did not start: {log_tail}") from exc
        return self

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def restart(self) -> None:
        """Stop (SIGTERM writes the persistence DB) and start again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
