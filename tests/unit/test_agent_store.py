from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.store import AckRejectedError, LastGood, Store, StoreFullError
from protocol.canonical import Ack, decode_reading, encode_ack, sign_reading
from protocol.reading import Reading, SignedReading
from protocol.signing import SigningKey, VerifyKey

DEVICE = SigningKey(bytes(range(32)))
GATEWAY = SigningKey(bytes(range(1, 33)))
GATEWAY_PUB = VerifyKey(GATEWAY.public_key)


def signed(store: Store, meter_id: str, energy: int = 1000) -> SignedReading:
    seq = store.allocate_seq(meter_id)
    r = Reading(
        meter_id=meter_id, key_id=DEVICE.key_id, seq=seq, read_at_ms=1_700_000_000_000 + seq,
        clock_synced=True, energy_import_wh=energy + seq, energy_export_wh=0, profile_id="eastron-sdm630",
    )
    return sign_reading(r, DEVICE)


def fill(store: Store, meter_id: str, n: int) -> list[SignedReading]:
    out = [signed(store, meter_id) for _ in range(n)]
    for s in out:
        store.append(s)
    store.flush()
    return out


def ack(meter_id: str, seq: int, key: SigningKey = GATEWAY) -> bytes:
    return encode_ack(Ack(meter_id=meter_id, acked_seq=seq, issued_at_ms=1), key)


def test_wal_full_and_roundtrip_of_exact_bytes(tmp_path: Path) -> None:
    st = Store(tmp_path / "s.db", max_readings=1000)
    written = fill(st, "M1", 3)
    assert st._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert st._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    got = st.fetch("M1", 0, 10)
    assert [g.seq for g in got] == [1, 2, 3]
    assert [(g.payload, g.signature) for g in got] == [(w.payload, w.signature) for w in written]
    assert decode_reading(got[0].payload).read_at_ms == 1_700_000_000_001
    assert st.fetch("M1", 2, 10)[0].seq == 3
    st.close()


def test_nothing_visible_before_flush_and_batched_transaction(tmp_path: Path) -> None:
    st = Store(tmp_path / "s.db", max_readings=1000)
    for _ in range(5):
        st.append(signed(st, "M1"))
    other = sqlite3.connect(tmp_path / "s.db")
    assert other.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 0
    assert st.flush() == 5
    assert other.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 5
    other.close()
    st.close()


def test_seq_persists_across_restart_and_is_never_reused_after_ack(tmp_path: Path) -> None:
    st = Store(tmp_path / "s.db", max_readings=1000)
    fill(st, "M1", 4)
    fill(st, "M2", 2)
    assert st.apply_ack("M1", ack("M1", 4), GATEWAY_PUB) == 4
    assert st.count() == 2
    st.close()
    st = Store(tmp_path / "s.db", max_readings=1000)
    assert st.allocate_seq("M1") == 5  # all M1 rows deleted, seq still continues
    assert st.allocate_seq("M2") == 3
    assert st.allocate_seq("M3") == 1
    assert st.acked_seq("M1") == 4
    st.close()


def test_allocated_but_uncommitted_seq_is_handed_out_again(tmp_path: Path) -> None:
    """A crash before flush: the seq was never published, so re-allocating it creates no duplicate."""
    st = Store(tmp_path / "s.db", max_readings=1000)
    fill(st, "M1", 2)
    st.allocate_seq("M1")  # 3, never committed
    st._db.close()  # simulated crash: no flush
    st2 = Store(tmp_path / "s.db", max_readings=1000)
    assert st2.allocate_seq("M1") == 3
    st2.close()


def test_forged_malformed_and_wrong_meter_acks_delete_nothing(tmp_path: Path) -> None:
    st = Store(tmp_path / "s.db", max_readings=1000)
    fill(st, "M1", 5)
    forger = SigningKey(bytes(32))
    cases = [
        (ack("M1", 5, forger), "ack_bad_signature"),
        (ack("M1", 5)[:-1] + b"\x00", "ack_bad_signature"),  # tampered signature
        (ack("M1", 5)[:20], "ack_"),  # truncated
        (b"gridmeter/ack/v9" + ack("M1", 5)[16:], "ack_unsupported_version"),
        (ack("M2", 5), "ack_wrong_meter"),
    ]
    for message, reason in cases:
        with pytest.raises(AckRejectedError) as exc:
            st.apply_ack("M1", message, GATEWAY_PUB)
        assert exc.value.reason.startswith(reason)
        assert st.count() == 5
    assert sum(st.rejected.values()) == len(cases) and st.rejected["ack_bad_signature"] == 2
    # written to the event log once per reason (rate-limited: a forged-ack flood must not wear the SD card)
    assert sorted(e[1] for e in st.events()) == sorted(set(st.rejected))
    assert {e[1] for e in st.events()} >= {"ack_bad_signature", "ack_wrong_meter"}
    assert st.apply_ack("M1", ack("M1", 3), GATEWAY_PUB) == 3
    assert st.apply_ack("M1", ack("M1", 2), GATEWAY_PUB) == 0  # replayed old ack: harmless
    assert [r.seq for r in st.fetch("M1", 0, 10)] == [4, 5]
    assert st.acked_seq("M1") == 3
    st.close()


def test_genuine_ack_beyond_allocated_resyncs_seqs_after_store_loss(tmp_path: Path) -> None:
    """The state dir was lost: the new store allocates seq 1.. again, the gateway drops those as duplicates and
    keeps acking its old seq 40. That ack used to be rejected (ack_beyond_allocated) forever: the store never
    drained again and, with overflow = stop_reading, the agent stopped reading for good."""
    st = Store(tmp_path / "s.db", max_readings=1000)
    fill(st, "M1", 5)
    st.append(signed(st, "M1"))  # seq 6 allocated, not yet committed
    fill(st, "M2", 2)
    assert st.apply_ack("M1", ack("M1", 40), GATEWAY_PUB) == 6  # 5 stored + 1 pending: none can be accepted now
    assert st.count() == 2 and st.per_meter() == {"M2": 2} and st.acked_seq("M1") == 40
    assert st.last_allocated("M1") == 40
    assert st.counters()["seq_resyncs"] == 1
    assert st.events(1)[0][1] == "seq_resync"
    st.close()
    again = Store(tmp_path / "s.db", max_readings=1000)
    assert again.allocate_seq("M1") == 41 and again.acked_seq("M1") == 40 and again.count() == 2
    assert again.apply_ack("M1", ack("M1", 40), GATEWAY_PUB) == 0  # the same ack again: nothing more
    again.close()


def test_overflow_drop_oldest_is_counted_and_recorded(tmp_path: Path) -> None:
    st = Store(tmp_path / "s.db", max_readings=100, overflow="drop_oldest")
    fill(st, "M1", 60)
    fill(st, "M2", 30)
    fill(st, "M1", 25)  # 115 > 100: 15 oldest (M1 seq 1..15) go
    assert st.count() == 100
    assert st.fetch("M1", 0, 1)[0].seq == 16
    assert st.counters()["dropped_overflow"] == 15
    assert st.per_meter() == {"M1": 70, "M2": 30}
    st.apply_ack("M2", ack("M2", 30), GATEWAY_PUB)
    assert st.per_meter() == {"M1": 70} and st.count() == 70
    ev = st.events()
    assert ev[0][1:] == ("overflow_drop_oldest", "M1", "dropped 15 unacked readings seq 1..15")
    assert st.oldest_read_at_ms() == 1_700_000_000_016
    st.close()
    again = Store(tmp_path / "s.db", max_readings=100)
    assert again.count() == 70 and again.per_meter() == {"M1": 70}
    again.close()


def test_overflow_stop_reading_refuses_until_acks_free_space(tmp_path: Path) -> None:
    st = Store(tmp_path / "s.db", max_readings=100, overflow="stop_reading")
    fill(st, "M1", 100)
    assert not st.accepting()
    with pytest.raises(StoreFullError, match="max 100"):
        st.allocate_seq("M1")
    assert st.counters()["refused_full"] == 1
    st.apply_ack("M1", ack("M1", 10), GATEWAY_PUB)
    assert st.accepting()
    assert st.allocate_seq("M1") == 101  # no seq was consumed by the refusal
    st.close()


def test_last_good_persisted_with_readings(tmp_path: Path) -> None:
    st = Store(tmp_path / "s.db", max_readings=100)
    st.append(signed(st, "M1"), good=LastGood(1001, 0, 1_700_000_000_001))
    st.flush()
    st.close()
    assert Store(tmp_path / "s.db", max_readings=100).last_good() == {"M1": LastGood(1001, 0, 1_700_000_000_001)}


def test_backlog_and_oldest(tmp_path: Path) -> None:
    st = Store(tmp_path / "s.db", max_readings=100)
    fill(st, "M1", 3)
    fill(st, "M2", 2)
    assert st.backlog() == {"M1": (3, 1, 3), "M2": (2, 1, 2)}
    assert st.oldest_read_at_ms() == 1_700_000_000_001
    st.close()


def test_disk_full_keeps_readings_pending_then_commits_them(tmp_path: Path) -> None:
    from agent.store import StoreError

    st = Store(tmp_path / "s.db", max_readings=100_000)
    fill(st, "M1", 10)
    pages = st._db.execute("PRAGMA page_count").fetchone()[0]
    st._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk full" (SQLITE_FULL)
    for _ in range(300):
        st.append(signed(st, "M1"))
    with pytest.raises(StoreError, match="cannot commit 300 readings"):
        st.flush()
    assert st.count() == 10 and st.pending == 300  # nothing lost, nothing half-written
    st._db.execute("PRAGMA max_page_count = 1073741823")
    assert st.flush() == 300
    assert [r.seq for r in st.fetch("M1", 0, 1000)] == list(range(1, 311))
    st.close()
    assert Store(tmp_path / "s.db", max_readings=100_000).allocate_seq("M1") == 311
