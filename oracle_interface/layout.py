"""The GridTokenX oracle program's interface, as bytes (pure; no RPC, no solders).

Facts from the oracle IDL (see README "Oracle interface"): Anchor discriminators, Borsh little-endian
arguments, the zero-copy OracleData layout (176 bytes) and Borsh MeterState (102 bytes), custom error codes
6000-6011, and the program's clock rule (FUTURE_SKEW_S). Account keys are base58 strings here. PDAs are in
oracle_interface.addresses, instructions with their account lists in oracle_interface.instructions.
The program ID is configuration; DEVNET_PROGRAM_ID is only its default (the one definition).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import base58

# The devnet deployment of the GridTokenX oracle (since 2026-06-07). It changed 19 times in the program's
# history, so it is only a default: production sets chain.program_id.
DEVNET_PROGRAM_ID = "64Vgos61STZ8pW9NnHi2iGtXMTQr7NqBoMorK6Zg8RJU"
MAX_METER_ID_SEED = 32
ORACLE_DATA_SIZE = 176
METER_STATE_SIZE = 102


def instruction_discriminator(name: str) -> bytes:
    return hashlib.sha256(f"global:{name}".encode()).digest()[:8]


def account_discriminator(name: str) -> bytes:
    return hashlib.sha256(f"account:{name}".encode()).digest()[:8]


def event_discriminator(name: str) -> bytes:
    return hashlib.sha256(f"event:{name}".encode()).digest()[:8]


DISC_INITIALIZE = instruction_discriminator("initialize")
DISC_SUBMIT_METER_READING = instruction_discriminator("submit_meter_reading")
DISC_TRIGGER_MARKET_CLEARING = instruction_discriminator("trigger_market_clearing")
DISC_UPDATE_ORACLE_STATUS = instruction_discriminator("update_oracle_status")
DISC_UPDATE_API_GATEWAY = instruction_discriminator("update_api_gateway")
DISC_UPDATE_PRODUCTION_RATIO_CONFIG = instruction_discriminator("update_production_ratio_config")
DISC_UPDATE_VALIDATION_CONFIG = instruction_discriminator("update_validation_config")
DISC_AGGREGATE_READINGS = instruction_discriminator("aggregate_readings")
ACCOUNT_ORACLE_DATA = account_discriminator("OracleData")
ACCOUNT_METER_STATE = account_discriminator("MeterState")
EVENT_METER_READING_SUBMITTED = event_discriminator("MeterReadingSubmitted")
EVENT_METER_READING_REJECTED = event_discriminator("MeterReadingRejected")

# Custom error codes since 2026-06-05. Older deployments numbered them differently: match names in logs,
# or pass a per-deployment table to error_name().
ERRORS: dict[int, str] = {
    6000: "UnauthorizedAuthority",
    6001: "UnauthorizedGateway",
    6002: "OracleInactive",
    6003: "EnergyValueOutOfRange",
    6004: "AnomalousReading",
    6005: "OutdatedReading",
    6006: "FutureReading",
    6007: "RateLimitExceeded",
    6008: "InvalidConfiguration",
    6009: "InvalidEpoch",
    6010: "MeterIdTooLong",
    6011: "AggregatorNotAdmitted",
}
ERROR_CODES: dict[str, int] = {v: k for k, v in ERRORS.items()}

FUTURE_SKEW_S = 60  # the program refuses reading_timestamp > Clock::unix_timestamp + 60 (check 4, FutureReading)
U64_MAX = 2**64 - 1


class LayoutError(ValueError):
    """Account bytes that do not match the expected layout or discriminator."""


def error_name(code: int, table: dict[int, str] | None = None) -> str:
    return (table or ERRORS).get(code, f"Custom({code})")


def _borsh_string(s: str) -> bytes:
    data = s.encode("utf-8")
    return struct.pack("<I", len(data)) + data


def submit_meter_reading_data(
    meter_id: str, energy_produced: int, energy_consumed: int, reading_timestamp: int, zone_id: int
) -> bytes:
    """Instruction data: disc + meter_id string + u64 produced + u64 consumed + i64 ts + i32 zone."""
    if len(meter_id.encode("utf-8")) > MAX_METER_ID_SEED:
        raise ValueError(f"meter_id {meter_id!r}: more than {MAX_METER_ID_SEED} bytes cannot be a PDA seed")
    for name, v in (("energy_produced", energy_produced), ("energy_consumed", energy_consumed)):
        if not 0 <= v <= U64_MAX:
            raise ValueError(f"{name}: must be a u64 (got {v})")
    return (
        DISC_SUBMIT_METER_READING
        + _borsh_string(meter_id)
        + struct.pack("<QQqi", energy_produced, energy_consumed, reading_timestamp, zone_id)
    )


def _key32(key: object) -> bytes:
    raw = bytes(key)  # type: ignore[call-overload]  # a solders Pubkey or 32 bytes
    if len(raw) != 32:
        raise ValueError(f"an account key is 32 bytes (got {len(raw)})")
    return raw


def initialize_data(chain_bridge: object) -> bytes:
    """chain_bridge: a Pubkey or its 32 bytes."""
    return DISC_INITIALIZE + _key32(chain_bridge)


def update_oracle_status_data(active: bool) -> bytes:
    return DISC_UPDATE_ORACLE_STATUS + struct.pack("<?", active)


def update_api_gateway_data(new_api_gateway: object) -> bytes:
    """new_api_gateway: a Pubkey or its 32 bytes."""
    return DISC_UPDATE_API_GATEWAY + _key32(new_api_gateway)


def update_production_ratio_config_data(max_ratio: int) -> bytes:
    return DISC_UPDATE_PRODUCTION_RATIO_CONFIG + struct.pack("<H", max_ratio)


def update_validation_config_data(min_energy: int, max_energy: int, anomaly_detection_enabled: bool) -> bytes:
    return DISC_UPDATE_VALIDATION_CONFIG + struct.pack("<QQ?", min_energy, max_energy, anomaly_detection_enabled)


def trigger_market_clearing_data(epoch_timestamp: int) -> bytes:
    return DISC_TRIGGER_MARKET_CLEARING + struct.pack("<q", epoch_timestamp)


def aggregate_readings_data(total_produced: int, total_consumed: int, valid: int, rejected: int) -> bytes:
    return DISC_AGGREGATE_READINGS + struct.pack("<QQQQ", total_produced, total_consumed, valid, rejected)


@dataclass(frozen=True, slots=True)
class OracleConfig:
    """Decoded OracleData account (the thresholds the gateway mirrors). Keys are base58 strings."""

    authority: str
    chain_bridge: str
    total_readings: int
    last_reading_timestamp: int
    last_clearing: int
    created_at: int
    min_energy_value: int
    max_energy_value: int
    total_valid_readings: int
    total_rejected_readings: int
    quality_score_updated_at: int
    total_global_energy_produced: int
    total_global_energy_consumed: int
    last_cleared_epoch: int
    min_reading_interval: int
    max_production_consumption_ratio: int
    active: bool
    anomaly_detection_enabled: bool
    last_quality_score: int


def account_key_problem(text: str) -> str | None:
    """None if text is a base58 Solana account key (a program ID, a public key: 32 bytes), else why not."""
    try:
        ok = len(base58.b58decode(text)) == 32
    except ValueError:
        ok = False
    return None if ok else "must be a base58 Solana public key (32 bytes)"


def _base58(raw: bytes) -> str:
    return base58.b58encode(raw).decode("ascii")


def decode_oracle_data(data: bytes) -> OracleConfig:
    if len(data) < ORACLE_DATA_SIZE:
        raise LayoutError(f"OracleData: {len(data)} bytes, expected {ORACLE_DATA_SIZE}")
    if data[:8] != ACCOUNT_ORACLE_DATA:
        raise LayoutError(f"OracleData: discriminator {data[:8].hex()} != {ACCOUNT_ORACLE_DATA.hex()}")
    u = struct.unpack_from("<QqqqQQQQqQQqHHBBB", data, 72)
    return OracleConfig(
        authority=_base58(data[8:40]),
        chain_bridge=_base58(data[40:72]),
        total_readings=u[0],
        last_reading_timestamp=u[1],
        last_clearing=u[2],
        created_at=u[3],
        min_energy_value=u[4],
        max_energy_value=u[5],
        total_valid_readings=u[6],
        total_rejected_readings=u[7],
        quality_score_updated_at=u[8],
        total_global_energy_produced=u[9],
        total_global_energy_consumed=u[10],
        last_cleared_epoch=u[11],
        min_reading_interval=u[12],
        max_production_consumption_ratio=u[13],
        active=u[14] == 1,
        anomaly_detection_enabled=u[15] == 1,
        last_quality_score=u[16],
    )


@dataclass(frozen=True, slots=True)
class MeterState:
    meter_id: str
    bump: int
    zone_id: int
    energy_produced: int
    energy_consumed: int
    total_energy_produced: int
    total_energy_consumed: int
    last_reading_timestamp: int
    total_readings: int
    created_at: int


def decode_meter_state(data: bytes) -> MeterState:
    if len(data) < METER_STATE_SIZE:
        raise LayoutError(f"MeterState: {len(data)} bytes, expected {METER_STATE_SIZE}")
    if data[:8] != ACCOUNT_METER_STATE:
        raise LayoutError(f"MeterState: discriminator {data[:8].hex()} != {ACCOUNT_METER_STATE.hex()}")
    id_len = data[40]
    if id_len > MAX_METER_ID_SEED:
        raise LayoutError(f"MeterState: meter_id_len {id_len} > 32")
    bump = data[41]
    zone, prod, cons, tprod, tcons, last_ts, total, created = struct.unpack_from("<iQQQQqQq", data, 42)
    return MeterState(
        meter_id=data[8 : 8 + id_len].decode("utf-8", errors="replace"),
        bump=bump,
        zone_id=zone,
        energy_produced=prod,
        energy_consumed=cons,
        total_energy_produced=tprod,
        total_energy_consumed=tcons,
        last_reading_timestamp=last_ts,
        total_readings=total,
        created_at=created,
    )
