"""`gridmeter gateway run` logs one line per event that matters: 145 of 149 lines used to be httpx's INFO line
for each JSON-RPC request (every submitter cycle). A real gateway process against the local chain, for a few
seconds of cycles every 0.2 s: no per-request lines; `--log-format json` gives one JSON object per line; a chain
outage is one ERROR line, its recovery one INFO line."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from gateway.oracle.authority_key import create_authority_key_file
from localchain.server import LocalChainServer

pytestmark = pytest.mark.integration

CYCLE_S = 0.2


async def _run_gateway(tmp_path: Path, srv: LocalChainServer, *args: str, during: float = 4.0,
                       outage: bool = False) -> list[str]:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[gateway]
state_dir = "{tmp_path / 'state'}"
[mqtt]
enabled = false
[dashboard]
enabled = false
[chain]
rpc_url = "{srv.url}"
program_id = "{srv.chain.program_id}"
authority_key_file = "{tmp_path / 'chain-bridge.json'}"
submit_interval_s = {CYCLE_S}
max_backoff_s = 1.0
""")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gridmeter.cli", "gateway", "run", "--config",
                                                str(cfg), *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        await asyncio.sleep(during)
        if outage:
            await srv.stop()
            await asyncio.sleep(3.0)
            await srv.start()
            await asyncio.sleep(3.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-3000:]
    return err.decode().splitlines()


@pytest.fixture
async def chain(tmp_path: Path) -> LocalChainServer:
    authority = create_authority_key_file(tmp_path / "chain-bridge.json")
    srv = LocalChainServer(chain_bridge=authority.pubkey())
    await srv.start()
    yield srv  # type: ignore[misc]
    await srv.stop()


async def test_no_per_request_lines(tmp_path: Path, chain: LocalChainServer) -> None:
    lines = await _run_gateway(tmp_path, chain)
    assert not [line for line in lines if "HTTP Request" in line or "httpx" in line], lines[:5]
    assert any("gateway running" in line for line in lines), lines
    assert len(lines) <= 3, lines  # started, running, (stopping): ~20 submitter cycles said nothing


async def test_json_lines_and_one_line_per_outage(tmp_path: Path, chain: LocalChainServer) -> None:
    lines = await _run_gateway(tmp_path, chain, "--log-format", "json", during=2.0, outage=True)
    docs = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(d) for d in docs)
    assert all(d["time"].endswith("Z") and d["time"][10] == "T" for d in docs)
    errors = [d for d in docs if d["level"] == "ERROR"]
    assert len(errors) == 1 and "submitter" in errors[0]["message"], errors  # the outage: once, not per retry
    assert [d["message"] for d in docs if d["message"] == "chain: submissions recovered"] == [
        "chain: submissions recovered"]
    assert len(docs) <= 6, docs
