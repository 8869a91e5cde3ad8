"""Publisher against a mosquitto that demands TLS (CA + client certificate) and username/password, with an
ACL: connection, refusal of a wrong password, and MQTT v5 PUBACK reason codes (135 = not authorised)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from agent.config import MqttSection
from agent.publisher import Publisher
from agent.store import Store
from protocol.canonical import sign_reading
from protocol.reading import Reading
from protocol.signing import SigningKey, VerifyKey
from testbed.broker import Broker
from tests.polling import until

pytestmark = pytest.mark.integration

DEVICE = SigningKey(bytes(range(32)))
GATEWAY = SigningKey(bytes(range(1, 33)))


def make_pki(d: Path) -> None:
    """Self-signed CA, server cert for 127.0.0.1, client cert CN=agent (mosquitto.conf(5) TLS listener)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=Test CA")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "san.ext"]), ("client", [])):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={'localhost' if name == 'server' else 'agent'}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", *ext)



@pytest.fixture
def secure_broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    b = Broker(
        workdir=tmp_path / "broker",
        passwords={"agent": "s3cret"},
        acl_lines=["user agent", "topic write gridmeter/v1/M1/readings", "topic write gridmeter/v1/M1/status",
                   "topic write gridmeter/v1/M2/status", "topic read gridmeter/v1/M1/ack"],
        extra_conf=[f"cafile {pki / 'ca.crt'}", f"certfile {pki / 'server.crt'}", f"keyfile {pki / 'server.key'}",
                    "require_certificate true"],
    )
    b.start()
    try:
        yield b, pki
    finally:
        b.close()


def cfg(broker: Broker, pki: Path, password: str) -> MqttSection:
    return MqttSection(gateway_public_key=GATEWAY.public_key, host="127.0.0.1", port=broker.port,
                       client_id="secure-agent", username="agent", password=password, tls_ca=pki / "ca.crt",
                       tls_cert=pki / "client.crt", tls_key=pki / "client.key", reconnect_min_s=0.1,
                       reconnect_max_s=0.5, ack_timeout_s=30)


def fill(store: Store, meter: str, n: int) -> None:
    for _ in range(n):
        seq = store.allocate_seq(meter)
        r = Reading(meter_id=meter, key_id=DEVICE.key_id, seq=seq, read_at_ms=1_700_000_000_000 + seq,
                    clock_synced=True, energy_import_wh=seq, energy_export_wh=0, profile_id="p")
        store.append(sign_reading(r, DEVICE))
    store.flush()


async def test_tls_client_cert_password_and_acl_reason_codes(tmp_path: Path, secure_broker) -> None:  # type: ignore[no-untyped-def]
    broker, pki = secure_broker
    store = Store(tmp_path / "agent.sqlite", max_readings=1000)
    fill(store, "M1", 5)
    fill(store, "M2", 5)  # the ACL forbids M2's readings topic
    pub = Publisher(cfg(broker, pki, "s3cret"), ["M1", "M2"], store, VerifyKey(GATEWAY.public_key))
    task = asyncio.create_task(pub.run())
    try:
        await until(lambda: pub.stats.connected, 15, "TLS + password connection")
        await until(lambda: pub.stats.published_batches == 2 and not pub._inflight, 15, "both PUBACKs")
        # M1 was accepted (success, or 16 = no matching subscribers), M2 answered with 135 (not authorised)
        assert pub.stats.puback_failures == 1
        assert store.count() == 10  # a PUBACK alone deletes nothing
    finally:
        await pub.stop()
        await task
        store.close()


async def test_wrong_password_is_refused_and_reported(tmp_path: Path, secure_broker) -> None:  # type: ignore[no-untyped-def]
    broker, pki = secure_broker
    store = Store(tmp_path / "agent.sqlite", max_readings=1000)
    pub = Publisher(cfg(broker, pki, "wrong"), ["M1"], store, VerifyKey(GATEWAY.public_key))
    task = asyncio.create_task(pub.run())
    try:
        await until(lambda: bool(pub.stats.last_connect_error), 15, "CONNACK refusal")
        assert "Not authorized" in pub.stats.last_connect_error or "Bad user name" in pub.stats.last_connect_error
        assert not pub.stats.connected
    finally:
        await pub.stop()
        await task
        store.close()
