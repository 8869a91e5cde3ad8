"""The oracle interface bytes against the worked examples in the GridTokenX oracle facts."""

from __future__ import annotations

import struct

import pytest
from solders.pubkey import Pubkey

from oracle_interface import addresses as A
from oracle_interface import layout as ol

PROGRAM = Pubkey.from_string("64Vgos61STZ8pW9NnHi2iGtXMTQr7NqBoMorK6Zg8RJU")


@pytest.mark.parametrize(
    ("disc", "hexval"),
    [
        (ol.DISC_INITIALIZE, "afaf6d1f0d989bed"),
        (ol.DISC_SUBMIT_METER_READING, "b5f7c48b4e58c0ce"),
        (ol.DISC_TRIGGER_MARKET_CLEARING, "b474a2a7251c4e9f"),
        (ol.DISC_UPDATE_ORACLE_STATUS, "1112c77d357a5b3f"),
        (ol.DISC_UPDATE_API_GATEWAY, "4245fcf27fa82a70"),
        (ol.DISC_UPDATE_PRODUCTION_RATIO_CONFIG, "6cf87886f7c62bab"),
        (ol.DISC_UPDATE_VALIDATION_CONFIG, "68ec8bff51d54d2d"),
        (ol.DISC_AGGREGATE_READINGS, "ee282d8e3653fdc9"),
        (ol.ACCOUNT_ORACLE_DATA, "1a83196e068d0a25"),
        (ol.ACCOUNT_METER_STATE, "ed06d7aeedd8e903"),
    ],
)
def test_discriminators(disc: bytes, hexval: str) -> None:
    assert disc.hex() == hexval


def test_submit_worked_example_49_bytes() -> None:
    data = ol.submit_meter_reading_data("METER-001", 1500, 300, 1750000000, 1)
    expected = bytes.fromhex(
        "b5f7c48b4e58c0ce" "09000000" "4d455445522d303031" "dc05000000000000" "2c01000000000000"
        "80e14e6800000000" "01000000"
    )
    assert len(data) == 49
    assert data == expected


def test_pdas_match_reference_addresses() -> None:
    assert A.oracle_data_pda(PROGRAM) == (Pubkey.from_string("DfTLVsxZ5s9mwcBU7FNY6DG9wpaMdoPzisJzaC7psV4g"), 252)
    assert A.meter_state_pda(PROGRAM, "METER-001") == (
        Pubkey.from_string("FSgUFMrEzPxwtYABtGWymZYfaf8jveVX1hu1DnL8Wy6E"),
        255,
    )


def test_meter_id_longer_than_seed_is_refused() -> None:
    A.meter_state_pda(PROGRAM, "M" * 32)
    with pytest.raises(ValueError, match="32 bytes"):
        A.meter_state_pda(PROGRAM, "M" * 33)
    with pytest.raises(ValueError, match="32 bytes"):
        ol.submit_meter_reading_data("M" * 33, 1, 1, 1, 1)


def test_decode_meter_state_layout() -> None:
    mid = b"METER-001"
    raw = (
        ol.ACCOUNT_METER_STATE
        + mid.ljust(32, b"\0")
        + bytes([len(mid), 255])
        + struct.pack("<iQQQQqQq", 7, 10, 20, 1000, 2000, 1750000000, 3, 1740000000)
    )
    assert len(raw) == ol.METER_STATE_SIZE
    st = ol.decode_meter_state(raw)
    assert (st.meter_id, st.bump, st.zone_id) == ("METER-001", 255, 7)
    assert (st.total_energy_produced, st.total_energy_consumed, st.total_readings) == (1000, 2000, 3)
    assert st.last_reading_timestamp == 1750000000
    with pytest.raises(ol.LayoutError):
        ol.decode_meter_state(b"\0" * 102)


def test_decode_oracle_data_offsets() -> None:
    auth, bridge = Pubkey.new_unique(), Pubkey.new_unique()
    raw = bytearray(176)
    raw[0:8] = ol.ACCOUNT_ORACLE_DATA
    raw[8:40], raw[40:72] = bytes(auth), bytes(bridge)
    struct.pack_into("<QQ", raw, 104, 5, 1_000_000)
    struct.pack_into("<HHBBB", raw, 168, 60, 1000, 1, 1, 100)
    cfg = ol.decode_oracle_data(bytes(raw))
    assert (cfg.authority, cfg.chain_bridge) == (str(auth), str(bridge))
    assert (cfg.min_energy_value, cfg.max_energy_value) == (5, 1_000_000)
    assert (cfg.min_reading_interval, cfg.max_production_consumption_ratio) == (60, 1000)
    assert cfg.active and cfg.anomaly_detection_enabled and cfg.last_quality_score == 100
