"""Table tests for agent.planner: coalescing, caps, holes, barriers, readable ranges, never splitting a value."""

from __future__ import annotations

import pytest

from agent.planner import hole_max, plan_reads, plan_registers, rtu_read_time_s
from firmware_config.loader import load_all
from firmware_config.schema import ReadPolicy, Register


def r(address: int, rtype: str = "float32", fc: int = 4, name: str | None = None) -> Register:
    n = name or f"r{fc}_{address}"
    return Register(name=n, measurement=n, address=address, type=rtype, function_code=fc, unit="W")


def spans(blocks: tuple) -> list[tuple[int, int, int]]:
    return [(b.function_code, b.address, b.count) for b in blocks]


CASES = [
    # (registers, policy, expected [(fc, address, count)])
    ("contiguous", [r(0), r(2), r(4)], ReadPolicy(max_registers=125), [(4, 0, 6)]),
    ("cap splits, never a value", [r(0), r(2), r(4)], ReadPolicy(max_registers=5), [(4, 0, 4), (4, 4, 2)]),
    ("cap of 3 with float64", [r(0, "float64"), r(4)], ReadPolicy(max_registers=4), [(4, 0, 4), (4, 4, 2)]),
    ("exception gaps: no bridging", [r(0), r(4)], ReadPolicy(gaps="exception"), [(4, 0, 2), (4, 4, 2)]),
    ("filler bridges small hole", [r(0), r(4)], ReadPolicy(gaps="filler"), [(4, 0, 6)]),
    ("filler: hole > hole_max", [r(0), r(20)], ReadPolicy(gaps="filler", max_hole=7), [(4, 0, 2), (4, 20, 2)]),
    ("filler: hole == hole_max", [r(0), r(9)], ReadPolicy(gaps="filler", max_hole=7), [(4, 0, 11)]),
    ("barrier in hole", [r(0), r(4)], ReadPolicy(gaps="filler", barriers=(3,)), [(4, 0, 2), (4, 4, 2)]),
    ("readable range allows hole", [r(0), r(4)], ReadPolicy(gaps="exception", readable=((0, 5),)), [(4, 0, 6)]),
    ("hole outside readable", [r(0), r(8)], ReadPolicy(gaps="filler", readable=((0, 5),)), [(4, 0, 2), (4, 8, 2)]),
    ("function codes apart", [r(0, fc=3), r(0, fc=4), r(2, fc=3)], ReadPolicy(), [(3, 0, 4), (4, 0, 2)]),
    ("unsorted input", [r(4), r(0), r(2)], ReadPolicy(), [(4, 0, 6)]),
    ("mixed widths", [r(0, "uint16"), r(1, "uint64"), r(5, "int16")], ReadPolicy(), [(4, 0, 6)]),
]


@pytest.mark.parametrize(("name", "regs", "policy", "expected"), CASES, ids=[c[0] for c in CASES])
def test_plan(name: str, regs: list[Register], policy: ReadPolicy, expected: list[tuple[int, int, int]]) -> None:
    blocks = plan_registers(regs, policy)
    assert spans(blocks) == expected
    planned = sorted(x.name for b in blocks for x in b.registers)
    assert planned == sorted(x.name for x in regs)
    for b in blocks:
        assert b.count <= policy.max_registers
        assert all(b.address <= x.address and x.end <= b.end for x in b.registers)


def test_one_shot_iterator_plans_every_register() -> None:
    """plan_registers takes any Iterable: a generator must not be consumed by the function-code pass."""
    regs = [r(0, fc=3), r(2, fc=3), r(0, fc=4)]
    assert spans(plan_registers(iter(regs), ReadPolicy())) == [(3, 0, 4), (4, 0, 2)]


def test_hole_max_heuristic() -> None:
    assert hole_max(ReadPolicy(), transport="rtu") == 10  # (20 + 1) // 2: Victron-style RTU overhead
    assert hole_max(ReadPolicy(), transport="tcp") == 31  # Victron TCP overhead 61 bytes
    # 100 ms device pause at 9600 8N1 = 96 characters more per extra request
    assert hole_max(ReadPolicy(inter_request_delay_ms=100)) == 58
    assert hole_max(ReadPolicy(max_registers=40, inter_request_delay_ms=1000)) == 40
    assert hole_max(ReadPolicy(max_hole=0, gaps="filler")) == 0


def test_bridge_holes_false_reads_only_declared_registers() -> None:
    blocks = plan_registers([r(0), r(4)], ReadPolicy(gaps="filler"), bridge_holes=False)
    assert spans(blocks) == [(4, 0, 2), (4, 4, 2)]


@pytest.mark.parametrize(("profile_id", "expected"), [
    ("eastron-sdm630", [(4, 0x0000, 0x4C)]),  # 76 registers <= Eastron's 80 in one request
    ("eastron-sdm120", [(4, 0x0000, 0x4C)]),
])
def test_eastron_plans(profile_id: str, expected: list[tuple[int, int, int]]) -> None:
    assert spans(plan_reads(load_all()[profile_id])) == expected


def test_eastron_without_holes_is_per_cluster() -> None:
    blocks = plan_reads(load_all()["eastron-sdm630"], bridge_holes=False)
    assert spans(blocks) == [(4, 0x00, 12), (4, 0x34, 2), (4, 0x3E, 2), (4, 0x46, 6)]


def test_rtu_read_time_matches_reference_table() -> None:
    # Modbus over Serial Line V1.02 §2.5.1: N=2 at 9600 8N1 = 25.0 ms, N=125 = 281.2 ms; 9600 8E1 N=2 = 27.5 ms
    assert rtu_read_time_s(2, 9600) == pytest.approx(0.025, abs=1e-6)
    assert rtu_read_time_s(125, 9600) == pytest.approx(0.28125, abs=1e-6)
    assert rtu_read_time_s(2, 9600, "E") == pytest.approx(0.0275, abs=1e-6)
    assert rtu_read_time_s(2, 38400) == pytest.approx((8 + 5 + 4) * 10 / 38400 + 0.0035, abs=1e-9)
