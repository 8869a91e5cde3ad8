"""mqtt-credentials: mosquitto password line + ACL enforced by a real mosquitto; TLS key/CSR/CA-signed cert."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gridmeter.cli import main
from provisioning.credentials import (
    CredentialsError,
    acl_lines,
    client_csr,
    generate_credentials,
    mosquitto_password_line,
    new_client_key,
    sign_client_cert,
)
from testbed.broker import Broker

DEADLINE_S = 10.0


def test_password_line_is_mosquitto_pbkdf2() -> None:
    line = mosquitto_password_line("gm-HOUSE-1", "s3cret", salt=b"0123456789ab")
    user, rest = line.split(":", 1)
    _, alg, iters, salt_b64, hash_b64 = rest.split("$")
    assert (user, alg, iters) == ("gm-HOUSE-1", "7", "101")
    assert base64.b64decode(salt_b64) == b"0123456789ab"
    assert base64.b64decode(hash_b64) == hashlib.pbkdf2_hmac("sha512", b"s3cret", b"0123456789ab", 101)


def test_acl_lines_confine_to_own_topics() -> None:
    assert acl_lines("gm-a", ["A-1", "A-2"]) == [
        "# gridmeter agent gm-a: own meters only",
        "user gm-a",
        "topic write gridmeter/v1/agent/gm-a/status",
        "topic write gridmeter/v1/A-1/readings",
        "topic write gridmeter/v1/A-1/status",
        "topic read gridmeter/v1/A-1/ack",
        "topic write gridmeter/v1/A-2/readings",
        "topic write gridmeter/v1/A-2/status",
        "topic read gridmeter/v1/A-2/ack",
    ]


def test_credentials_are_random_and_not_in_repr() -> None:
    a, b = generate_credentials(["A-1"]), generate_credentials(["A-1"])
    assert a.username == "gm-A-1" and a.password != b.password and len(a.password) >= 32
    assert a.password not in repr(a)


def test_csr_and_ca_signed_cert() -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fleet CA")])
    now = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
               .serial_number(1).not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=9))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = new_client_key()
    csr = client_csr(key, "gm-HOUSE-1")
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gm-HOUSE-1"
    cert = sign_client_cert(csr, ca_cert, ca_key, now=now, days=30)
    assert cert.issuer == ca_name and cert.subject == csr.subject
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    cert.verify_directly_issued_by(ca_cert)
    assert cert.not_valid_after_utc == now + dt.timedelta(days=30)


def test_cli_writes_files_never_prints_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["provision", "mqtt-credentials", "--meter-id", "HOUSE-1", "--out-dir", str(tmp_path), "--tls-csr"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    env = (tmp_path / "gm-HOUSE-1.env").read_text()
    password = env.split("GRIDMETER_MQTT_PASSWORD=")[1].strip()
    assert password and password not in out.out
    for name in ("gm-HOUSE-1.env", "gm-HOUSE-1.passwd", "gm-HOUSE-1.key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert "topic write gridmeter/v1/HOUSE-1/readings" in out.out
    csr = x509.load_pem_x509_csr((tmp_path / "gm-HOUSE-1.csr").read_bytes())
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gm-HOUSE-1"


def test_cli_bad_meter_id_names_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["provision", "mqtt-credentials", "--meter-id", "bad/id", "--out-dir", str(tmp_path)])
    assert rc == 2 and "--meter-id" in capsys.readouterr().err


def test_cli_unreadable_ca_is_a_message_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    rc = main(["provision", "mqtt-credentials", "--meter-id", "HOUSE-1", "--out-dir", str(tmp_path / "out"),
               "--ca-cert", str(tmp_path / "ca.pem"), "--ca-key", str(tmp_path / "ca.pem")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: --ca-cert ") and "not a readable PEM certificate" in err


@pytest.mark.parametrize("prefix", ["gridmeter/v1\ntopic readwrite #", "#", "gm/+/x", "/gm", "gm//v1", "gm v1"])
def test_topic_prefix_cannot_widen_or_inject_acl(prefix: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["provision", "mqtt-credentials", "--meter-id", "HOUSE-1", "--out-dir", str(tmp_path),
               "--topic-prefix", prefix])
    assert rc == 2 and "--topic-prefix" in capsys.readouterr().err
    assert not (tmp_path / "gm-HOUSE-1.acl").exists()
    with pytest.raises(CredentialsError, match="--topic-prefix"):
        acl_lines("gm-HOUSE-1", ["HOUSE-1"], prefix)


# ---- real mosquitto ------------------------------------------------------------------------------------------


class V5Client:
    """Minimal synchronous MQTT v5 client: connect, publish QoS 1 and return the PUBACK reason code."""

    def __init__(self, port: int, username: str, password: str) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{username}", protocol=mqtt.MQTTv5)
        self.c.username_pw_set(username, password)
        self.connected = threading.Event()
        self.connect_rc: int | None = None
        self.acks: dict[int, int] = {}
        self.acked = threading.Condition()
        self.messages: list[tuple[str, bytes]] = []
        self.got = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_publish = self._on_publish
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.connected.wait(DEADLINE_S)

    def _on_connect(self, c: mqtt.Client, u: object, flags: mqtt.ConnectFlags, rc: ReasonCode,
                    props: Properties | None) -> None:
        self.connect_rc = rc.value
        self.connected.set()

    def _on_publish(self, c: mqtt.Client, u: object, mid: int, rc: ReasonCode, props: Properties | None) -> None:
        with self.acked:
            self.acks[mid] = rc.value
            self.acked.notify_all()

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self.got:
            self.messages.append((msg.topic, msg.payload))
            self.got.notify_all()

    def publish(self, topic: str, payload: bytes) -> int:
        info = self.c.publish(topic, payload, qos=1, properties=Properties(PacketTypes.PUBLISH))
        with self.acked:
            assert self.acked.wait_for(lambda: info.mid in self.acks, DEADLINE_S), f"no PUBACK for {topic}"
            return self.acks[info.mid]

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, qos=1)
        assert done.wait(DEADLINE_S)

    def wait_message(self, topic: str) -> bytes:
        with self.got:
            assert self.got.wait_for(lambda: any(t == topic for t, _ in self.messages), DEADLINE_S), topic
            return next(p for t, p in self.messages if t == topic)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[tuple[Broker, dict[str, str]]]:
    agent = generate_credentials(["HOUSE-1"])
    gw_line = mosquitto_password_line("gateway", "gw-pass")
    passwd = tmp_path / "passwd"
    passwd.write_text(mosquitto_password_line(agent.username, agent.password) + "\n" + gw_line + "\n")
    acl = [*acl_lines(agent.username, agent.meter_ids), "user gateway", "topic readwrite gridmeter/v1/#"]
    b = Broker(workdir=tmp_path / "broker", acl_lines=acl,
               extra_conf=["allow_anonymous false", f"password_file {passwd}"])
    b.start()
    try:
        yield b, {"agent_user": agent.username, "agent_pass": agent.password}
    finally:
        b.close()


@pytest.mark.integration
def test_acl_enforced_by_real_mosquitto(acl_broker: tuple[Broker, dict[str, str]]) -> None:
    broker, creds = acl_broker
    gw = V5Client(broker.port, "gateway", "gw-pass")
    agent = V5Client(broker.port, creds["agent_user"], creds["agent_pass"])
    try:
        assert agent.connect_rc == 0 and gw.connect_rc == 0
        gw.subscribe("gridmeter/v1/+/readings")
        agent.subscribe("gridmeter/v1/HOUSE-1/ack")
        agent.subscribe("gridmeter/v1/OTHER-9/ack")  # not allowed: subscription granted but nothing delivered

        assert agent.publish("gridmeter/v1/HOUSE-1/readings", b"r1") < 0x80
        assert gw.wait_message("gridmeter/v1/HOUSE-1/readings") == b"r1"
        assert agent.publish("gridmeter/v1/HOUSE-1/status", b"online") < 0x80
        assert agent.publish(f"gridmeter/v1/agent/{creds['agent_user']}/status", b"online") < 0x80  # its LWT topic
        assert agent.publish("gridmeter/v1/agent/someone-else/status", b"offline") == 135
        assert agent.publish("gridmeter/v1/OTHER-9/readings", b"forged") == 135  # Not authorized
        assert agent.publish("gridmeter/v1/HOUSE-1/ack", b"self-ack") == 135  # acks come only from the gateway

        assert gw.publish("gridmeter/v1/HOUSE-1/ack", b"ack1") < 0x80
        assert agent.wait_message("gridmeter/v1/HOUSE-1/ack") == b"ack1"
        assert gw.publish("gridmeter/v1/OTHER-9/ack", b"ack9") < 0x80
        gw.publish("gridmeter/v1/HOUSE-1/ack", b"ack2")  # ordering marker: after ack9
        agent.wait_message("gridmeter/v1/HOUSE-1/ack")
        with agent.got:
            assert agent.got.wait_for(lambda: sum(t.endswith("/ack") for t, _ in agent.messages) >= 2, DEADLINE_S)
        assert all(t != "gridmeter/v1/OTHER-9/ack" for t, _ in agent.messages)
        assert [p for t, p in gw.messages] == [b"r1"]  # the forged reading never reached the gateway
    finally:
        agent.close()
        gw.close()


@pytest.mark.integration
def test_wrong_password_refused(acl_broker: tuple[Broker, dict[str, str]]) -> None:
    broker, creds = acl_broker
    c = V5Client(broker.port, creds["agent_user"], "wrong")
    try:
        assert c.connect_rc == 135  # Not authorized (MQTT v5 CONNACK)
    finally:
        c.close()


def test_cli_config_and_env_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--config takes the meter ids from the agent config and sets [mqtt].username there; the password goes to the
    agent's EnvironmentFile, which agent.config reads (GRIDMETER_MQTT_PASSWORD)."""
    from agent.config import load_config
    from tests.provisioning.test_register import register_args

    assert main(["provision", "keygen", "--key-file", str(tmp_path / "device.key")]) == 0
    assert main(["provision", *register_args(tmp_path)]) == 0
    env_file = tmp_path / "agent.env"
    rc = main(["provision", "mqtt-credentials", "--config", str(tmp_path / "agent.toml"), "--out-dir",
               str(tmp_path / "mqtt"), "--env-file", str(env_file)])
    assert rc == 0, capsys.readouterr().err
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    cfg = load_config(tmp_path / "agent.toml", env=env)
    assert cfg.mqtt.username == "gm-HOUSE-1" == env["GRIDMETER_MQTT_USERNAME"]
    assert cfg.mqtt.password == env["GRIDMETER_MQTT_PASSWORD"]
    assert "GRIDMETER_MQTT_PASSWORD" not in (tmp_path / "agent.toml").read_text()
    assert (tmp_path / "mqtt" / "gm-HOUSE-1.acl").read_text().splitlines()[1:] == acl_lines(
        "gm-HOUSE-1", ["HOUSE-1"])[1:]
