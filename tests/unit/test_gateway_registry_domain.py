"""A registration record whose created_at_ms is 2^63 (legal u64, not a SQLite INTEGER) ended in a traceback
(OverflowError at INSERT); it is now refused as invalid_field, by the registry and by `gateway meters add`."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.registry import RegistryError
from gateway.store.registry import Registry
from tests.unit.test_protocol_integer_domain import registration_text

STRONG = "Zq3-vN8x_Lk2Rt7Wm5Yp"


@pytest.mark.parametrize("created_at_ms", [2**63, 2**64 - 1])
def test_registry_refuses_created_at_beyond_2_63(tmp_path: Path, created_at_ms: int) -> None:
    reg = Registry(tmp_path / "registry.sqlite")
    try:
        with pytest.raises(RegistryError, match="created_at_ms") as exc:
            reg.add(registration_text(created_at_ms), 1)
        assert exc.value.reason == "invalid_field"
        assert reg.all() == []
        meter, action = reg.add(registration_text(2**63 - 1), 1)  # the largest stored value is fine
        assert (meter.registered_at_ms, action) == (2**63 - 1, "added")
    finally:
        reg.close()


def test_cli_meters_add_reports_it_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gridmeter.cli import main

    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[dashboard]\ntoken = "{STRONG}"\n')
    rec = tmp_path / "record.txt"
    rec.write_text(registration_text(2**63) + "\n")
    assert main(["gateway", "meters", "add", str(rec), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "created_at_ms" in err and "[invalid_field]" in err and "Traceback" not in err
