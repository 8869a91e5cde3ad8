"""`gridmeter provision mqtt-credentials`: broker identity for one agent, confined to its own topics.

What it produces (pure functions, I/O only in write_* and the CLI):
* a random username/password (secrets module) for the agent;
* the mosquitto password-file line in mosquitto 2.x's own format ("$7$" = PBKDF2-HMAC-SHA512, 101
  iterations, 12-byte salt, as `mosquitto_passwd` writes it), so the broker admin appends one line instead of
  handling the plaintext password;
* the mosquitto ACL lines: write gridmeter/v1/<meter_id>/readings and /status, read .../ack, nothing else.
  A stolen agent credential can then publish only for its own meters (another meter's topic is denied:
  MQTT v5 PUBACK reason 135), and the gateway still verifies every signature anyway;
* for fleets that authenticate by TLS client certificate (mosquitto `use_identity_as_username`): an EC P-256
  key and a CSR with CN = username, or directly a certificate signed by the fleet CA (--ca-cert/--ca-key).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from base.durable_file import write_durably
from protocol.canonical import BROKER_MESSAGE_SIZE_LIMIT
from protocol.errors import InvalidFieldError
from protocol.identifiers import USERNAME_RULE, meter_id_problem, mqtt_username_problem, topic_prefix_problem
from protocol.topics import PREFIX, ack_topic, agent_status_topic, readings_topic, status_topic
from provisioning.errors import ProvisionError, ProvisionInputError

# mosquitto 2.0 mosquitto_passwd: PBKDF2-SHA512, 101 iterations, 12-byte salt ("$7$101$salt$hash").
# Matching it exactly means the broker reads our line like one it wrote itself.
MOSQUITTO_PBKDF2_ITERATIONS = 101
MOSQUITTO_SALT_BYTES = 12
# 24 random bytes -> 32 url-safe characters (192 bits): far beyond online guessing, fits any config field.
DEFAULT_PASSWORD_BYTES = 24
# Client certificates live on a Pi for years but must be renewable; 2 years matches common fleet CA policy.
DEFAULT_CERT_DAYS = 730


class CredentialsError(ProvisionInputError):
    """Bad input for credential generation; the message names it."""


@dataclass(frozen=True)
class MqttCredentials:
    username: str
    password: str
    meter_ids: tuple[str, ...]

    def __repr__(self) -> str:  # never print the password by accident
        return f"MqttCredentials(username={self.username!r}, meter_ids={self.meter_ids!r})"


def validate_username(username: str) -> str:
    if mqtt_username_problem(username):
        raise CredentialsError(f"--username: {USERNAME_RULE} (got {username!r})")
    return username


def validate_meter_id(meter_id: str, flag: str = "--meter-id") -> str:
    problem = meter_id_problem(meter_id)
    if problem:
        raise CredentialsError(f"{flag}: {problem} (got {meter_id!r})")
    return meter_id


def default_username(meter_ids: Sequence[str]) -> str:
    return f"gm-{meter_ids[0]}"[:64]


def generate_credentials(meter_ids: Sequence[str], username: str | None = None) -> MqttCredentials:
    if not meter_ids:
        raise CredentialsError("--meter-id: at least one meter id is required")
    ids = tuple(validate_meter_id(m) for m in meter_ids)
    if len(set(ids)) != len(ids):
        raise CredentialsError(f"--meter-id: duplicate meter ids (got {list(ids)})")
    user = validate_username(username or default_username(ids))
    return MqttCredentials(user, secrets.token_urlsafe(DEFAULT_PASSWORD_BYTES), ids)


def mosquitto_password_line(username: str, password: str, *, salt: bytes | None = None,
                            iterations: int = MOSQUITTO_PBKDF2_ITERATIONS) -> str:
    """One line for mosquitto's password_file, hashed the way mosquitto_passwd 2.x does it."""
    validate_username(username)
    salt = os.urandom(MOSQUITTO_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"{username}:$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def validate_topic_prefix(prefix: str, flag: str = "--topic-prefix") -> str:
    problem = topic_prefix_problem(prefix)
    if problem:
        raise CredentialsError(f"{flag}: {problem} (got {prefix!r})")
    return prefix


def acl_lines(username: str, meter_ids: Sequence[str], prefix: str = PREFIX) -> list[str]:
    """mosquitto acl_file block: this user may write readings/status and read acks of its meters only, plus
    its own agent status topic (the LWT); the agent uses the username as its MQTT client id."""
    validate_topic_prefix(prefix)
    lines = [f"# gridmeter agent {username}: own meters only", f"user {validate_username(username)}",
             f"topic write {agent_status_topic(username, prefix)}"]
    for m in meter_ids:
        lines += [
            f"topic write {readings_topic(m, prefix)}",
            f"topic write {status_topic(m, prefix)}",
            f"topic read {ack_topic(m, prefix)}",
        ]
    return lines


def mosquitto_passwd_command(username: str, passwd_file: str = "/etc/mosquitto/passwd") -> str:
    """The equivalent command for admins who prefer the broker's own tool (prompts for the password)."""
    return f"mosquitto_passwd {passwd_file} {username}"


# --- TLS client certificates ---------------------------------------------------------------------------


def new_client_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def client_csr(key: ec.EllipticCurvePrivateKey, username: str) -> x509.CertificateSigningRequest:
    """CSR with CN = username: mosquitto's use_identity_as_username maps the CN onto the ACL user."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, validate_username(username))])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())


def load_ca(ca_cert_path: Path, ca_key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(Path(ca_cert_path).read_bytes())
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"--ca-cert {ca_cert_path}: not a readable PEM certificate ({exc})") from exc
    try:
        key = serialization.load_pem_private_key(Path(ca_key_path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CredentialsError(f"--ca-key {ca_key_path}: not a readable unencrypted PEM key ({exc})") from exc
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise CredentialsError(f"--ca-key {ca_key_path}: does not belong to --ca-cert {ca_cert_path}")
    return cert, key  # type: ignore[return-value]


def sign_client_cert(csr: x509.CertificateSigningRequest, ca_cert: x509.Certificate, ca_key: object, *,
                     now: dt.datetime, days: int = DEFAULT_CERT_DAYS) -> x509.Certificate:
    """Client certificate for the CSR's subject, signed by the fleet CA (clientAuth only)."""
    if not csr.is_signature_valid:
        raise CredentialsError("CSR signature does not verify")
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate a Pi clock a little behind the CA's
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    return builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]


def write_secret_file(path: Path, data: bytes) -> None:
    """Write a secret (0600) durably: tmp + fsync + rename + fsync(dir)."""
    write_durably(path, data, 0o600)


def write_public_file(path: Path, data: bytes) -> None:
    """ACL lines, CSR, certificate: nothing secret (0644), written durably like the rest."""
    write_durably(path, data, 0o644)


def env_file_text(creds: MqttCredentials) -> str:
    """systemd EnvironmentFile for the agent (agent.config reads these two variables)."""
    return f"GRIDMETER_MQTT_USERNAME={creds.username}\nGRIDMETER_MQTT_PASSWORD={creds.password}\n"


# --- the `mqtt-credentials` step (files) ---------------------------------------------------------------------


class IdentityError(ProvisionError):
    """A file could not be read or written."""


class IdentityInputError(CredentialsError):
    """Bad input; the message names the flag."""


@dataclass(frozen=True)
class IdentityRequest:
    meter_ids: tuple[str, ...]
    out_dir: Path
    username: str | None = None
    topic_prefix: str = PREFIX
    config: Path | None = None
    tls_csr: bool = False
    ca_cert: Path | None = None
    ca_key: Path | None = None
    cert_days: int = DEFAULT_CERT_DAYS
    env_file: Path | None = None  # where the agent's EnvironmentFile goes (systemd unit: /etc/gridmeter/agent.env)

    @classmethod
    def from_args(cls, args: Any) -> IdentityRequest:
        ids = list(args.meter_id)
        prefix = args.topic_prefix
        config = Path(args.config).absolute() if args.config else None
        if config is not None:
            from agent.config import ConfigError, load_config

            try:
                cfg = load_config(config, env={})
            except ConfigError as exc:
                raise IdentityInputError(f"--config: {exc}") from exc
            ids += [m.meter_id for m in cfg.meters if m.meter_id not in ids]
            prefix = validate_topic_prefix(cfg.mqtt.topic_prefix, f"--config {config}: [mqtt].topic_prefix")
        else:
            validate_topic_prefix(prefix)
        if bool(args.ca_cert) != bool(args.ca_key):
            raise IdentityInputError("--ca-cert/--ca-key: give both to sign a client certificate")
        days = args.cert_days if args.cert_days is not None else DEFAULT_CERT_DAYS
        if not 1 <= days <= 3650:
            raise IdentityInputError(f"--cert-days: 1..3650 (got {days})")
        return cls(tuple(ids), Path(args.out_dir), args.username, prefix, config, bool(args.tls_csr),
                   Path(args.ca_cert) if args.ca_cert else None, Path(args.ca_key) if args.ca_key else None, days,
                   Path(args.env_file) if args.env_file else None)


@dataclass
class IdentityResult:
    credentials: MqttCredentials
    password_line: str
    acl: list[str]
    files: dict[str, Path]

    def to_json(self) -> dict[str, Any]:
        return {"username": self.credentials.username, "meter_ids": list(self.credentials.meter_ids),
                "password_file_line": self.password_line, "acl_lines": self.acl,
                "files": {k: str(v) for k, v in self.files.items()}}


def create(req: IdentityRequest, *, now: dt.datetime | None = None) -> IdentityResult:
    try:
        creds = generate_credentials(req.meter_ids, req.username)
    except InvalidFieldError as exc:
        raise IdentityInputError(f"--meter-id: {exc}") from exc
    except CredentialsError as exc:
        raise IdentityInputError(str(exc)) from exc
    line = mosquitto_password_line(creds.username, creds.password)
    acl = acl_lines(creds.username, creds.meter_ids, req.topic_prefix)
    out, user = req.out_dir, creds.username
    files = {"env": req.env_file or out / f"{user}.env", "password_file_line": out / f"{user}.passwd",
             "acl": out / f"{user}.acl"}
    try:
        write_secret_file(files["env"], env_file_text(creds).encode())
        write_secret_file(files["password_file_line"], (line + "\n").encode())
        write_public_file(files["acl"], ("\n".join(acl) + "\n").encode())
        if req.tls_csr or req.ca_cert:
            key = new_client_key()
            csr = client_csr(key, user)
            files["tls_key"] = out / f"{user}.key"
            files["tls_csr"] = out / f"{user}.csr"
            write_secret_file(files["tls_key"], key_pem(key))
            write_public_file(files["tls_csr"], csr.public_bytes(serialization.Encoding.PEM))
            if req.ca_cert and req.ca_key:
                ca_cert, ca_key = load_ca(req.ca_cert, req.ca_key)
                try:
                    cert = sign_client_cert(csr, ca_cert, ca_key, now=now or dt.datetime.now(dt.UTC),
                                            days=req.cert_days)
                except (ValueError, TypeError) as exc:  # e.g. an Ed25519 CA key cannot sign with SHA-256
                    raise CredentialsError(f"--ca-key {req.ca_key}: cannot sign a client certificate ({exc})") from exc
                files["tls_cert"] = out / f"{user}.crt"
                write_public_file(files["tls_cert"], cert.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise IdentityError(f"{out}: cannot write credential files ({exc.strerror or exc})") from exc
    if req.config is not None:
        _update_config(req.config, creds.username, files)
    return IdentityResult(creds, line, acl, files)


def _update_config(config: Path, username: str, files: dict[str, Path]) -> None:
    """Set [mqtt].username (and the client cert/key) in the agent config; the password stays in the env file."""
    from provisioning.agent_toml import AgentTomlError, dumps, read_doc, validate_doc, write_atomic

    try:
        doc = read_doc(config)
        mqtt = dict(doc.get("mqtt", {}))
        mqtt["username"] = username
        mqtt["client_id"] = username  # the ACL grants the agent status topic (LWT) under this id
        if "tls_cert" in files:
            mqtt["tls_cert"], mqtt["tls_key"] = str(files["tls_cert"].absolute()), str(files["tls_key"].absolute())
        doc["mqtt"] = mqtt
        validate_doc(doc, config)
        write_atomic(config, dumps(doc, header="gridmeter agent config (updated by provision mqtt-credentials)"))
    except AgentTomlError as exc:
        raise IdentityError(str(exc)) from exc


def describe(res: IdentityResult) -> str:
    f = res.files
    lines = [
        f"broker username: {res.credentials.username}  (meters: {', '.join(res.credentials.meter_ids)})",
        f"agent secret:    {f['env']} (0600; install as the agent's EnvironmentFile; password not shown)",
        "",
        "on the broker, append this line to the password_file (hashed like mosquitto_passwd does):",
        f"  {res.password_line}",
        f"  (or run: {mosquitto_passwd_command(res.credentials.username)} and type the password from {f['env'].name})",
        "",
        "and these lines to the acl_file, then reload mosquitto (SIGHUP):",
        *(f"  {a}" for a in res.acl),
        "",
        f"mosquitto.conf should also bound messages: message_size_limit {BROKER_MESSAGE_SIZE_LIMIT}",
    ]
    if "tls_csr" in f:
        lines += ["", f"TLS client key: {f['tls_key']} (0600)   CSR (CN={res.credentials.username}): {f['tls_csr']}"]
    if "tls_cert" in f:
        lines.append(f"client certificate signed by the fleet CA: {f['tls_cert']}")
    return "\n".join(lines)
