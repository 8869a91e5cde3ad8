"""The agent's integer domain and store failures: values SQLite cannot hold never reach the store, every store
failure is a StoreError (a damaged file a StoreCorruptError), and a corrupt store at start is moved aside.

Reproductions (main at 72ff4a4): agent/decode.py accepted an energy register up to 2^64-1; the store's meter_state
insert then raised OverflowError (not StoreError) from flush; a damaged page surfaced as raw sqlite3.DatabaseError;
a corrupt store at start failed every start (restart loop)."""

from __future__ import annotations

import sqlite3
from fractions import Fraction
from pathlib import Path

import pytest

from agent.decode import ENERGY_MAX, Invalid, decode_image, image_from_block
from agent.decode import scale as scale_value
from agent.store import LastGood, Store, StoreError
from agent.store_recovery import KEEP_CORRUPT_COPIES, STORE_REPLACED_EVENT, open_or_replace
from agent.store_schema import StoreCorruptError, Transaction
from firmware_config.loader import get_profile
from firmware_config.schema import Register
from protocol.canonical import Ack, encode_ack, sign_reading
from protocol.reading import Reading, SignedReading
from protocol.signing import SigningKey, VerifyKey

DEVICE = SigningKey(bytes(range(32)))
GATEWAY = SigningKey(bytes(range(1, 33)))


def reg(measurement: str = "energy_import_wh") -> Register:
    return Register(name="x", measurement=measurement, address=0, type="uint64", unit="Wh", scale=Fraction(1),
                    function_code=3)


@pytest.mark.parametrize(("raw", "expected"), [
    (2**63 - 1, 2**63 - 1),
    (2**63, Invalid("out_of_range")),
    (2**63 + 12345, Invalid("out_of_range")),
    (2**64 - 2, Invalid("out_of_range")),
])
def test_energy_beyond_signed_64_bit_is_an_invalid_read(raw: int, expected: object) -> None:
    assert ENERGY_MAX == 2**63 - 1
    assert scale_value(raw, reg()) == expected
    assert scale_value(raw, reg("energy_export_wh")) == expected


def test_glitched_uint64_register_of_a_real_profile_is_out_of_range() -> None:
    """ABB B2x: uint64 x 0.01 kWh at 0x5000 = 10 Wh per count. 2^60 counts = 1.15e19 Wh > 2^63-1."""
    profile = get_profile("abb-b2x")
    energy = next(r for r in profile.registers if r.measurement == "energy_import_wh")
    raw = 2**60
    words = [(raw >> s) & 0xFFFF for s in (48, 32, 16, 0)]
    image = image_from_block(energy.function_code, energy.address, words)
    decoded = decode_image(profile, image, only=[energy])
    assert decoded.invalid == {"energy_import_wh": "out_of_range"} and decoded.values == {}
    raw = (2**63 - 1) // 10  # the largest count that still fits
    words = [(raw >> s) & 0xFFFF for s in (48, 32, 16, 0)]
    decoded = decode_image(profile, image_from_block(energy.function_code, energy.address, words), only=[energy])
    assert decoded.values == {"energy_import_wh": raw * 10}


def signed(store: Store, meter_id: str = "M1", energy: int = 1000) -> SignedReading:
    seq = store.allocate_seq(meter_id)
    r = Reading(meter_id=meter_id, key_id=DEVICE.key_id, seq=seq, read_at_ms=1_700_000_000_000 + seq,
                clock_synced=True, energy_import_wh=energy + seq, energy_export_wh=0, profile_id="eastron-sdm630")
    return sign_reading(r, DEVICE)


def test_last_good_beyond_sqlite_integer_is_refused_and_never_blocks_later_commits(tmp_path: Path) -> None:
    """On main the value was queued; every flush then raised OverflowError (outside StoreError) for good."""
    st = Store(tmp_path / "s.db", max_readings=1000)
    st.append(signed(st), good=LastGood(1001, 0, 1_700_000_000_001))
    poison = signed(st)  # (a Reading itself refuses energy beyond 2^63-1: protocol.reading)
    with pytest.raises(StoreError, match=r"last good import_wh=9223372036854775809 beyond 0\.\.9223372036854775807"):
        st.append(poison, good=LastGood(2**63 + 1, 0, 1_700_000_000_002))
    assert st.pending == 1
    st.append(signed(st), good=LastGood(1003, 0, 1_700_000_000_003))
    assert st.flush() == 2
    assert st.last_good() == {"M1": LastGood(1003, 0, 1_700_000_000_003)}
    st.close()


def test_overflow_inside_a_transaction_is_a_store_error(tmp_path: Path) -> None:
    st = Store(tmp_path / "s.db", max_readings=1000)
    with pytest.raises(StoreError, match="signed 64-bit"), Transaction(st._db):
        st._db.execute("INSERT INTO meter_state VALUES (?,?,?,?)", ("M1", 2**63, 0, 0))
    assert st.last_good() == {}
    st.close()


def fill(path: Path, n: int, meters: int = 2) -> None:
    st = Store(path, max_readings=1_000_000)
    for i in range(n):
        st.append(signed(st, f"M{i % meters}"))
    st.flush()
    st.ack("M0", 3)
    st.close()  # the last connection checkpoints the WAL into the main file


def corrupt(path: Path, first_page: int = 3, pages: int = 4) -> None:
    """Overwrite `pages` b-tree pages in the middle of the file with garbage (what a failing SD card does)."""
    with sqlite3.connect(path) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
        total = db.execute("PRAGMA page_count").fetchone()[0]
    assert total > first_page + pages, total
    with open(path, "r+b") as f:
        f.seek(page * (first_page - 1))
        f.write(bytes([0xA5, 0x5A]) * (page * pages // 2))


def test_corrupt_page_is_a_store_corrupt_error_never_raw_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    fill(path, 3000)
    st = Store(path, max_readings=1_000_000)  # opened while still intact
    corrupt(path)
    st._db.execute("PRAGMA shrink_memory")  # drop cached pages: the next reads come from the damaged file
    for read in (st.backlog, lambda: st.fetch("M0", 0, 10_000)):  # on main: backlog() raised sqlite3.DatabaseError
        with pytest.raises(StoreCorruptError, match=f"{path}: .*: the store file is corrupt") as e:
            read()
        assert not isinstance(e.value, sqlite3.Error)
    st._db.close()
    with pytest.raises(StoreCorruptError, match=rf"{path}: the store file is corrupt"):
        Store(path, max_readings=1000)


def test_corrupt_store_at_start_is_moved_aside_and_a_fresh_one_records_it(tmp_path: Path) -> None:
    path = tmp_path / "state" / "agent.sqlite"
    path.parent.mkdir()
    fill(path, 3000)
    corrupt(path)
    damaged = path.read_bytes()
    st, aside = open_or_replace(path, max_readings=1000)
    assert aside is not None and aside.parent == path.parent and aside.name.startswith("agent.sqlite.corrupt-")
    assert aside.read_bytes() == damaged  # kept for inspection, byte for byte
    assert st.count() == 0 and st.last_allocated("M1") == 0
    (_at, kind, meter, detail), = st.events()
    assert kind == STORE_REPLACED_EVENT and meter is None and str(aside) in detail and "corrupt" in detail
    assert st.counters() == {"corrupt_store_replaced": 1}
    # seqs restart at 1; the gateway's genuine ack for the old life resyncs them (existing mechanism)
    st.append(signed(st, "M1"))
    st.flush()
    ack = encode_ack(Ack(meter_id="M1", acked_seq=1500, issued_at_ms=1), GATEWAY)
    assert st.apply_ack("M1", ack, VerifyKey(GATEWAY.public_key)) == 1
    assert st.allocate_seq("M1") == 1501
    st.close()
    st2, again = open_or_replace(path, max_readings=1000)  # the fresh store is fine: no second move
    assert again is None and st2.last_allocated("M1") == 1501  # the allocation was persisted by close()
    st2.close()


def test_not_a_database_is_replaced_too_and_only_the_newest_copies_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "agent.sqlite"
    asides = []
    for i in range(KEEP_CORRUPT_COPIES + 2):
        path.write_bytes(b"this is not an SQLite file, a torn write left it like this " * 100)
        st, aside = open_or_replace(path, max_readings=1000, wall_ms=lambda i=i: 1_700_000_000_000 + i * 1000)
        st.close()
        assert aside is not None
        asides.append(aside)
    left = sorted(p.name for p in tmp_path.glob("agent.sqlite.corrupt-*"))
    assert left == sorted(a.name for a in asides[-KEEP_CORRUPT_COPIES:])


def test_other_store_errors_are_not_mistaken_for_corruption(tmp_path: Path) -> None:
    """A store laid out by a newer agent is refused as it is: moving it aside would hide a downgrade."""
    path = tmp_path / "agent.sqlite"
    Store(path, max_readings=1000).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99") as e:
        open_or_replace(path, max_readings=1000)
    assert not isinstance(e.value, StoreCorruptError)
    assert list(tmp_path.glob("*.corrupt-*")) == []
