"""The store's SD-card write path: acks cost no write of their own, deletes ride in the next flush, new stores
use 1 KiB pages. Counted in WAL bytes and transactions, not in time."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.store import Store
from agent.store_schema import NEW_STORE_PAGE_SIZE
from protocol.canonical import Ack, encode_ack, sign_reading
from protocol.reading import Reading
from protocol.signing import SigningKey, VerifyKey

DEVICE = SigningKey(bytes(range(32)))
GATEWAY = SigningKey(bytes(range(1, 33)))
GATEWAY_PUB = VerifyKey(GATEWAY.public_key)


def add(store: Store, meter_id: str, n: int) -> None:
    for _ in range(n):
        seq = store.allocate_seq(meter_id)
        r = Reading(meter_id=meter_id, key_id=DEVICE.key_id, seq=seq, read_at_ms=1_700_000_000_000 + seq * 1000,
                    clock_synced=True, energy_import_wh=1000 + seq, energy_export_wh=0, profile_id="eastron-sdm630")
        store.append(sign_reading(r, DEVICE))


def ack(store: Store, meter_id: str, seq: int) -> int:
    return store.apply_ack(meter_id, encode_ack(Ack(meter_id=meter_id, acked_seq=seq, issued_at_ms=1), GATEWAY),
                           GATEWAY_PUB)


def wal_size(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_acks_write_nothing_until_the_next_flush_which_groups_them_with_new_readings(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    st = Store(db, max_readings=1000)
    add(st, "M1", 5)
    add(st, "M2", 5)
    assert st.flush() == 10
    wal = wal_size(db)
    assert ack(st, "M1", 3) == 3 and ack(st, "M2", 5) == 5 and ack(st, "M1", 4) == 1
    assert wal_size(db) == wal  # three acks: not a byte written
    # ...but applied at once for everything that reads the store
    assert st.count() == 1 and st.per_meter() == {"M1": 1}
    assert [r.seq for r in st.fetch("M1", 0, 10)] == [5] and st.fetch("M2", 0, 10) == []
    assert st.backlog() == {"M1": (1, 5, 5)} and st.oldest_read_at_ms() == 1_700_000_000_000 + 5_000
    other = sqlite3.connect(db)
    assert other.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 10  # still on disk
    add(st, "M1", 2)
    assert st.flush() == 2  # one transaction: 2 inserts + the deletes + acked_seq
    assert other.execute("SELECT meter_id, seq FROM readings ORDER BY id").fetchall() == [
        ("M1", 5), ("M1", 6), ("M1", 7)]
    assert dict(other.execute("SELECT meter_id, acked_seq FROM seqs").fetchall()) == {"M1": 4, "M2": 5}
    assert wal_size(db) > wal
    other.close()
    st.close()


def test_power_cut_after_an_ack_only_resends_what_it_covered(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    st = Store(db, max_readings=1000)
    add(st, "M1", 4)
    st.flush()
    assert ack(st, "M1", 4) == 4
    st._db.close()  # power cut before the next flush
    again = Store(db, max_readings=1000)
    assert again.acked_seq("M1") == 0 and again.count() == 4  # re-sent; the gateway drops them as duplicates
    assert again.allocate_seq("M1") == 5  # seqs never go back
    assert ack(again, "M1", 4) == 4
    again.close()  # close flushes
    third = Store(db, max_readings=1000)
    assert third.count() == 0 and third.acked_seq("M1") == 4
    third.close()


def test_an_idle_store_flushes_pending_deletes_without_new_readings(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    st = Store(db, max_readings=1000)
    add(st, "M1", 3)
    st.flush()
    ack(st, "M1", 3)
    assert st.flush() == 0  # no readings, but the deletes are committed
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 0
    assert st.flush() == 0
    st.close()


def test_new_store_page_size_and_existing_store_kept(tmp_path: Path) -> None:
    st = Store(tmp_path / "new.db", max_readings=1000)
    assert st._db.execute("PRAGMA page_size").fetchone()[0] == NEW_STORE_PAGE_SIZE == 1024
    st.close()
    old = tmp_path / "old.db"
    con = sqlite3.connect(old)
    con.execute("PRAGMA page_size = 4096")
    con.execute("CREATE TABLE x (a)")
    con.close()
    st = Store(old, max_readings=1000)  # an existing file keeps its page size (WAL cannot change it)
    assert st._db.execute("PRAGMA page_size").fetchone()[0] == 4096
    add(st, "M1", 2)
    assert st.flush() == 2
    st.close()
