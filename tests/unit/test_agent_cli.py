from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.keys import create_key_file
from gridmeter.cli import main

CONFIG = """
[agent]
state_dir = "state"
key_file = "device.key"
[clock]
check = "always-synced"
[mqtt]
gateway_public_key = "{gw}"
[[buses]]
name = "rs485-0"
kind = "rtu"
port = "/dev/ttyAMA0"
[[meters]]
meter_id = "HOUSE-1"
bus = "rs485-0"
unit_id = 1
profile = "{profile}"
"""


def write(tmp_path: Path, profile: str = "eastron-sdm630", gw: str = "22" * 32) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(gw=gw, profile=profile))
    return path


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create_key_file(tmp_path / "device.key")
    assert main(["agent", "check-config", str(write(tmp_path))]) == 0
    assert "OK (1 buses, 1 meters: HOUSE-1=eastron-sdm630@rs485-0/1)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "profile, gw, make_key, mode, message",
    [
        ("eastron-sdm630", "22" * 32, False, 0o600, "key file missing"),
        ("eastron-sdm630", "22" * 32, True, 0o644, "accessible by group/others (mode 0644)"),
        ("no-such-meter", "22" * 32, True, 0o600, "meters[0].profile: unknown profile; known: "),
        ("eastron-sdm630", "zz", True, 0o600, "mqtt.gateway_public_key: must be 64 hex characters"),
    ],
)
def test_bad_config_or_key_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], profile: str, gw: str,
                                  make_key: bool, mode: int, message: str) -> None:
    if make_key:
        create_key_file(tmp_path / "device.key")
        os.chmod(tmp_path / "device.key", mode)
    path = write(tmp_path, profile, gw)
    assert main(["agent", "check-config", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert main(["agent", "run", "--config", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "state").exists()  # refused before touching anything


def test_status_unreachable_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    from testbed.ports import free_port

    assert main(["agent", "status", "--url", f"http://127.0.0.1:{free_port()}/health"]) == 3
    assert "unreachable" in capsys.readouterr().err


def test_unloadable_tls_material_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    create_key_file(tmp_path / "device.key")
    (tmp_path / "ca.crt").write_text("not a certificate\n")
    path = write(tmp_path)
    path.write_text(path.read_text().replace("[mqtt]\n", '[mqtt]\ntls_ca = "ca.crt"\n'))
    assert main(["agent", "run", "--config", str(path)]) == 2
    assert "mqtt.tls_ca/tls_cert/tls_key: cannot load TLS material" in capsys.readouterr().err


def test_reset_counter_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.store import Store

    path = write(tmp_path)
    assert main(["agent", "reset-counter", "--config", str(path), "NOPE", "--reason", "x"]) == 2
    assert main(["agent", "reset-counter", "--config", str(path), "HOUSE-1", "--reason", "swapped"]) == 0
    assert "counter reset recorded" in capsys.readouterr().out
    st = Store(tmp_path / "state" / "agent.sqlite", max_readings=1000)
    assert st.pending_counter_resets() == {"HOUSE-1"}
    st.close()


def test_run_with_status_port_taken_is_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    create_key_file(tmp_path / "device.key")
    path = write(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path.write_text(path.read_text() + f'[status]\nlisten = "127.0.0.1:{port}"\n')
        assert main(["agent", "run", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gridmeter agent: agent stopped: ") and str(port) in err and "Traceback" not in err


@pytest.mark.parametrize("reason", ["", " ", "x" * 501])
def test_reset_counter_reason_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str], reason: str) -> None:
    path = write(tmp_path)
    assert main(["agent", "reset-counter", "--config", str(path), "HOUSE-1", "--reason", reason]) == 2
    assert "--reason: 1..500 characters" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_status_answer_that_is_not_an_object_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    """A JSON list from the URL (not our endpoint) used to end in AttributeError ('list' has no .get)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"[1, 2]")

        def log_message(self, *_: object) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        assert main(["agent", "status", "--url", f"http://127.0.0.1:{srv.server_port}/health"]) == 3
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)
    assert "not a JSON object (got list)" in capsys.readouterr().err


def test_unusable_state_dir_is_a_message_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """mkdir of the state dir raised OSError, which Store did not translate: a traceback instead of exit 1."""
    create_key_file(tmp_path / "device.key")
    (tmp_path / "state").write_text("a file where the state directory should be\n")
    path = write(tmp_path)
    assert main(["agent", "run", "--config", str(path)]) == 1
    assert main(["agent", "reset-counter", "--config", str(path), "HOUSE-1", "--reason", "swapped"]) == 1
    err = capsys.readouterr().err
    assert err.count("cannot open store") == 2 and "Traceback" not in err
