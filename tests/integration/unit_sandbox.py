"""Apply a systemd unit's seccomp settings to the current process, the way systemd does, without systemd.

Emulated from the unit file: SystemCallFilter= (allow list, `~` deny entries, in order; groups expanded with
`systemd-analyze syscall-filter`), SystemCallErrorNumber=, SystemCallArchitectures=native, MemoryDenyWriteExecute=
(systemd's rules: no mmap with PROT_WRITE|PROT_EXEC, no mprotect/pkey_mprotect adding PROT_EXEC, no shmat with
SHM_EXEC) and NoNewPrivileges (libseccomp sets it). Each is its own seccomp filter, as systemd loads them; the
kernel applies the strictest answer. Not emulated: namespaces and mounts (ProtectSystem, PrivateTmp, ProtectProc,
ProcSubset, PrivateMounts...), capabilities, device ACLs.

Used through sitecustomize (tests/integration/test_systemd_units.py): the real `gridmeter agent run` /
`gridmeter gateway run` processes then run all their work (imports included) under the unit's filters.
"""

from __future__ import annotations

import ctypes
import errno
import re
import subprocess
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000


def SCMP_ACT_ERRNO(e: int) -> int:  # libseccomp's name
    return 0x00050000 | (e & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def syscall_groups() -> dict[str, list[str]]:
    """`systemd-analyze syscall-filter`: every @group and its members (syscalls or nested @groups)."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for n in names:
        out |= expand(groups[n], groups) if n.startswith("@") else {n}
    return out


def unit_settings(unit: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z]+)=(.*)", line.strip())
        if m:
            settings.setdefault(m[1], []).append(m[2].strip())
    return settings


def allowed_syscalls(filters: list[str], groups: dict[str, list[str]]) -> set[str]:
    """systemd's order semantics for an allow list: later entries add, `~` entries remove."""
    allowed: set[str] = set()
    for entry in filters:
        deny = entry.startswith("~")
        names = expand(entry.lstrip("~").split(), groups)
        allowed = allowed - names if deny else allowed | names
    return allowed


def apply(unit: Path) -> dict[str, int]:
    """Load the unit's filters into this process (irreversible). Returns counts, for the test's report.
    MemoryDenyWriteExecute first: the allow list would refuse the seccomp(2) call that loads it (systemd, too,
    installs the system call filter last)."""
    s = unit_settings(unit)
    lib = _lib()
    filters = s.get("SystemCallFilter", [])
    if not filters or filters[0].startswith("~"):
        raise ValueError(f"{unit}: expected an allow-list SystemCallFilter=")
    err = getattr(errno, s.get("SystemCallErrorNumber", ["EPERM"])[-1])
    mdwx = s.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes"
    if mdwx:
        ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        rules = [("mmap", 2, PROT_WRITE | PROT_EXEC), ("mprotect", 2, PROT_EXEC), ("pkey_mprotect", 2, PROT_EXEC),
                 ("shmat", 2, SHM_EXEC)]
        for name, arg, mask in rules:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue
            cmp = _ArgCmp(arg, SCMP_CMP_MASKED_EQ, mask, mask)
            if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(errno.EPERM), nr, 1, ctypes.byref(cmp)) != 0:
                raise OSError(f"seccomp_rule_add {name} (MemoryDenyWriteExecute)")
        if lib.seccomp_load(ctx) != 0:
            raise OSError(ctypes.get_errno(), "seccomp_load (MemoryDenyWriteExecute)")
        lib.seccomp_release(ctx)
    allowed = allowed_syscalls(filters, syscall_groups())
    ctx = lib.seccomp_init(SCMP_ACT_ERRNO(err))  # native architecture only (SystemCallArchitectures=native)
    n = 0
    for name in sorted(allowed):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            continue  # not a syscall on this architecture
        if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, None) != 0:
            raise OSError(f"seccomp_rule_add {name}")
        n += 1
    if lib.seccomp_load(ctx) != 0:
        raise OSError(ctypes.get_errno(), "seccomp_load (allow list)")
    lib.seccomp_release(ctx)
    return {"allowed_syscalls": n, "memory_deny_write_execute": int(mdwx)}
