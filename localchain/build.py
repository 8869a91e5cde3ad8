"""Deterministic build of the local oracle program: C -> clang-14 BPF object -> sBPF v0 shared object.

`python -m localchain.build` compiles localchain/program/oracle.c with fixed flags and writes
localchain/program/oracle.so; `python -m localchain.build --check` rebuilds into a temporary directory and
fails if the bytes differ from the committed .so (so the binary can never drift from its source).

The relinker (`link`) is a pure function of the relocatable object's bytes. It produces the layout the
Solana loader accepts for SBPF v0 (see /work/shared/reference/sbpf-programs.md):
- one `.text` and one `.rodata` (every allocated read-only input section merged), every section's address
  equal to its file offset, rodata mapped at 0x1_0000_0000 + address;
- `lddw` of a rodata/text address (R_BPF_64_64) and 8-byte pointers in rodata (R_BPF_64_ABS64) get the
  absolute VM address;
- calls to defined functions get a pc-relative immediate, calls to syscalls get -1 plus a `.rel.dyn`
  R_BPF_64_32 entry against a `.dynsym` symbol of that name (the loader puts the murmur3 hash in);
- every `call` has its source register cleared (clang sets 1, the Solana toolchain uses 0).
No timestamps, paths or host data enter the output.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PROGRAM_DIR = Path(__file__).resolve().parent / "program"
SOURCE_NAME = "oracle.c"
OUTPUT_NAME = "oracle.so"
DEFAULT_CLANG = "clang-14"  # pinned: another major version may emit different (still valid) code
# Fixed flags. -mcpu=v2: v3/alu32 emits 32-bit jumps sBPF v0 rejects. No -g: debug info would embed paths.
CLANG_FLAGS = (
    "-target", "bpf", "-mcpu=v2", "-O2", "-std=c11",
    "-ffreestanding", "-fno-builtin", "-fno-stack-protector", "-fno-ident",
    "-Wall", "-Wextra", "-Werror",
)  # fmt: skip

# Syscalls the program may call; anything else undefined is a link error (e.g. an accidental memcpy).
SYSCALLS = frozenset(
    {
        "sol_log_",
        "sol_log_data",
        "sol_log_64_",
        "sol_log_compute_units_",
        "sol_get_clock_sysvar",
        "sol_get_rent_sysvar",
        "sol_create_program_address",
        "sol_try_find_program_address",
        "sol_invoke_signed_c",
        "sol_memcpy_",
        "sol_memset_",
        "sol_memcmp_",
        "sol_sha256",
    }
)
ENTRYPOINT = "entrypoint"
MM_PROGRAM_START = 0x1_0000_0000  # where the loader maps the ELF's read-only sections

# ELF constants
EM_BPF = 247
ET_REL, ET_DYN = 1, 3
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_DYNAMIC, SHT_NOBITS, SHT_REL, SHT_DYNSYM = 1, 2, 3, 6, 8, 9, 11
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
STT_SECTION, STT_FUNC = 3, 2
R_BPF_64_64, R_BPF_64_ABS64, R_BPF_64_ABS32, R_BPF_64_NODYLD32, R_BPF_64_32 = 1, 2, 3, 4, 10
DT_NULL, DT_STRTAB, DT_SYMTAB, DT_STRSZ, DT_SYMENT, DT_REL, DT_RELSZ, DT_RELENT = 0, 5, 6, 10, 11, 17, 18, 19
OP_CALL, OP_LDDW = 0x85, 0x18


class BuildError(Exception):
    """The program cannot be built or linked; the message says what and where."""


@dataclass(frozen=True)
class _Section:
    index: int
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    align: int
    data: bytes


@dataclass(frozen=True)
class _Symbol:
    name: str
    info: int
    shndx: int
    value: int

    @property
    def type(self) -> int:
        return self.info & 0xF


def _cstr(table: bytes, off: int) -> str:
    end = table.index(b"\0", off)
    return table[off:end].decode()


def _parse_object(obj: bytes) -> tuple[list[_Section], list[_Symbol]]:
    if obj[:4] != b"\x7fELF" or obj[4] != 2 or obj[5] != 1:
        raise BuildError("not a little-endian ELF64 object")
    e_type, e_machine = struct.unpack_from("<HH", obj, 16)
    if e_type != ET_REL or e_machine != EM_BPF:
        raise BuildError(f"expected a BPF relocatable object (type {e_type}, machine {e_machine})")
    e_shoff = struct.unpack_from("<Q", obj, 40)[0]
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", obj, 58)
    raw = []
    for i in range(e_shnum):
        name, typ, flags, _addr, off, size, link, info, align, _ent = struct.unpack_from(
            "<IIQQQQIIQQ", obj, e_shoff + i * e_shentsize
        )
        data = b"" if typ == SHT_NOBITS else obj[off : off + size]
        raw.append((name, typ, flags, off, size, link, info, align, data))
    shstr = raw[e_shstrndx][8]
    sections = [
        _Section(i, _cstr(shstr, r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for i, r in enumerate(raw)
    ]
    symtabs = [s for s in sections if s.type == SHT_SYMTAB]
    if len(symtabs) != 1:
        raise BuildError("object must have exactly one symbol table")
    symtab = symtabs[0]
    strtab = sections[symtab.link].data
    symbols = []
    for off in range(0, len(symtab.data), 24):
        st_name, st_info, _other, st_shndx, st_value, _size = struct.unpack_from("<IBBHQQ", symtab.data, off)
        name = _cstr(strtab, st_name) if st_name else ""
        if st_info & 0xF == STT_SECTION and not name:
            name = sections[st_shndx].name
        symbols.append(_Symbol(name, st_info, st_shndx, st_value))
    return sections, symbols


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a if a > 1 else n


def link(obj: bytes) -> bytes:
    """Relink a clang BPF relocatable object into an sBPF v0 shared object (pure, deterministic)."""
    sections, symbols = _parse_object(obj)
    alloc = [s for s in sections if s.flags & SHF_ALLOC and s.size > 0]
    texts = [s for s in alloc if s.flags & SHF_EXECINSTR]
    if len(texts) != 1 or texts[0].name != ".text":
        raise BuildError(f"expected exactly one .text section, got {[s.name for s in texts]}")
    text_sec = texts[0]
    ro_secs = [s for s in alloc if not s.flags & SHF_EXECINSTR]
    for s in ro_secs:
        if s.flags & SHF_WRITE or s.type == SHT_NOBITS:
            raise BuildError(f"writable section {s.name}: mutable globals are rejected by the loader")

    text_off = 0x40  # right after the ELF header (no program headers)
    text = bytearray(text_sec.data)
    rodata_off = _align(text_off + len(text), 8)
    ro_base: dict[int, int] = {}  # input section index -> offset inside the merged .rodata
    rodata = bytearray()
    for s in ro_secs:
        start = _align(len(rodata), max(s.align, 1))
        rodata.extend(b"\0" * (start - len(rodata)))
        ro_base[s.index] = start
        rodata.extend(s.data)

    def vaddr(sym: _Symbol, addend: int, where: str) -> int:
        if sym.shndx == text_sec.index:
            return MM_PROGRAM_START + text_off + sym.value + addend
        if sym.shndx in ro_base:
            return MM_PROGRAM_START + rodata_off + ro_base[sym.shndx] + sym.value + addend
        raise BuildError(f"{where}: relocation against {sym.name!r} in an unsupported section")

    syscall_calls: list[tuple[int, str]] = []  # (offset inside .text, syscall name)
    relocated_calls: set[int] = set()
    for rel in sections:
        if rel.type != SHT_REL or not rel.data:
            continue
        target = sections[rel.info]
        if not target.flags & SHF_ALLOC:
            continue  # debug sections
        for off in range(0, len(rel.data), 16):
            r_offset, r_info = struct.unpack_from("<QQ", rel.data, off)
            rtype, sym = r_info & 0xFFFFFFFF, symbols[r_info >> 32]
            where = f"{target.name}+{r_offset:#x}"
            if rtype in (R_BPF_64_ABS32, R_BPF_64_NODYLD32):
                continue
            if target.index == text_sec.index:
                if rtype == R_BPF_64_64:
                    if text[r_offset] != OP_LDDW:
                        raise BuildError(f"{where}: R_BPF_64_64 not on lddw")
                    addend = struct.unpack_from("<i", text, r_offset + 4)[0]
                    addr = vaddr(sym, addend, where)
                    struct.pack_into("<I", text, r_offset + 4, addr & 0xFFFFFFFF)
                    struct.pack_into("<I", text, r_offset + 12, addr >> 32)
                elif rtype == R_BPF_64_32:
                    if text[r_offset] != OP_CALL:
                        raise BuildError(f"{where}: R_BPF_64_32 not on a call")
                    relocated_calls.add(r_offset)
                    if sym.shndx == 0:
                        if sym.name not in SYSCALLS:
                            raise BuildError(f"{where}: call to undefined {sym.name!r} (not a known syscall)")
                        struct.pack_into("<i", text, r_offset + 4, -1)
                        syscall_calls.append((r_offset, sym.name))
                    elif sym.shndx == text_sec.index and sym.type == STT_FUNC:
                        rel_slots = sym.value // 8 - (r_offset // 8 + 1)
                        struct.pack_into("<i", text, r_offset + 4, rel_slots)
                    else:
                        raise BuildError(f"{where}: call relocation against {sym.name!r} unsupported")
                else:
                    raise BuildError(f"{where}: unsupported relocation type {rtype}")
            elif target.index in ro_base:
                if rtype != R_BPF_64_ABS64:
                    raise BuildError(f"{where}: unsupported relocation type {rtype} in rodata")
                pos = ro_base[target.index] + r_offset
                addend = struct.unpack_from("<q", rodata, pos)[0]
                struct.pack_into("<Q", rodata, pos, vaddr(sym, addend, where))
            else:
                raise BuildError(f"{where}: relocation in unsupported section")

    # Every call: clear the source register; calls that were not relocated are clang-resolved internal
    # pc-relative calls and must not look like syscalls (-1).
    for off in range(0, len(text), 8):
        if text[off] == OP_CALL:
            text[off + 1] &= 0x0F
            if off not in relocated_calls and struct.unpack_from("<i", text, off + 4)[0] == -1:
                raise BuildError(f".text+{off:#x}: unrelocated call -1")
        elif text[off] == OP_LDDW:
            pass  # second slot of lddw is data, but its opcode byte is 0: never mistaken for a call

    entry = [s for s in symbols if s.name == ENTRYPOINT and s.shndx == text_sec.index]
    if len(entry) != 1:
        raise BuildError(f"no {ENTRYPOINT!r} function in .text")

    # Dynamic symbols: one per syscall name, sorted for determinism.
    names = sorted({n for _, n in syscall_calls})
    dynstr = bytearray(b"\0")
    name_off: dict[str, int] = {}
    for n in names:
        name_off[n] = len(dynstr)
        dynstr.extend(n.encode() + b"\0")
    dynsym = bytearray(24)
    for n in names:
        dynsym.extend(struct.pack("<IBBHQQ", name_off[n], 0x10, 0, 0, 0, 0))  # GLOBAL NOTYPE UND
    sym_index = {n: i + 1 for i, n in enumerate(names)}

    dynamic_off = _align(rodata_off + len(rodata), 8)
    dynamic_size = 8 * 16
    dynsym_off = dynamic_off + dynamic_size
    dynstr_off = dynsym_off + len(dynsym)
    reldyn_off = _align(dynstr_off + len(dynstr), 8)
    reldyn = bytearray()
    for off, n in sorted(syscall_calls):
        reldyn.extend(struct.pack("<QQ", text_off + off, sym_index[n] << 32 | R_BPF_64_32))
    dynamic = b"".join(
        struct.pack("<qQ", tag, val)
        for tag, val in (
            (DT_SYMTAB, dynsym_off),
            (DT_STRTAB, dynstr_off),
            (DT_STRSZ, len(dynstr)),
            (DT_SYMENT, 24),
            (DT_REL, reldyn_off),
            (DT_RELSZ, len(reldyn)),
            (DT_RELENT, 16),
            (DT_NULL, 0),
        )
    )
    assert len(dynamic) == dynamic_size
    shstrtab = bytearray(b"\0")
    sh_names: dict[str, int] = {}
    for n in (".text", ".rodata", ".dynamic", ".dynsym", ".dynstr", ".rel.dyn", ".shstrtab"):
        sh_names[n] = len(shstrtab)
        shstrtab.extend(n.encode() + b"\0")
    shstrtab_off = reldyn_off + len(reldyn)
    shoff = _align(shstrtab_off + len(shstrtab), 8)

    out = bytearray(shoff)
    out[text_off : text_off + len(text)] = text
    out[rodata_off : rodata_off + len(rodata)] = rodata
    out[dynamic_off : dynamic_off + dynamic_size] = dynamic
    out[dynsym_off : dynsym_off + len(dynsym)] = dynsym
    out[dynstr_off : dynstr_off + len(dynstr)] = dynstr
    out[reldyn_off : reldyn_off + len(reldyn)] = reldyn
    out[shstrtab_off : shstrtab_off + len(shstrtab)] = shstrtab

    # (name, type, flags, offset, size, link, info, align, entsize); addr == offset for alloc sections
    headers = [(0, 0, 0, 0, 0, 0, 0, 0, 0)]
    headers.append((sh_names[".text"], SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, text_off, len(text), 0, 0, 8, 0))
    if rodata:
        headers.append((sh_names[".rodata"], SHT_PROGBITS, SHF_ALLOC, rodata_off, len(rodata), 0, 0, 8, 0))
    n_dynamic = len(headers)
    n_dynsym, n_dynstr = n_dynamic + 1, n_dynamic + 2
    headers += [
        (sh_names[".dynamic"], SHT_DYNAMIC, SHF_ALLOC | SHF_WRITE, dynamic_off, dynamic_size, n_dynstr, 0, 8, 16),
        (sh_names[".dynsym"], SHT_DYNSYM, SHF_ALLOC, dynsym_off, len(dynsym), n_dynstr, 1, 8, 24),
        (sh_names[".dynstr"], SHT_STRTAB, SHF_ALLOC, dynstr_off, len(dynstr), 0, 0, 1, 0),
        (sh_names[".rel.dyn"], SHT_REL, SHF_ALLOC, reldyn_off, len(reldyn), n_dynsym, 0, 8, 16),
        (sh_names[".shstrtab"], SHT_STRTAB, 0, shstrtab_off, len(shstrtab), 0, 0, 1, 0),
    ]
    for name, typ, flags, off, size, lnk, info, align, ent in headers:
        addr = off if flags & SHF_ALLOC else 0
        out.extend(struct.pack("<IIQQQQIIQQ", name, typ, flags, addr, off, size, lnk, info, align, ent))

    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        ET_DYN,
        EM_BPF,
        1,
        text_off + entry[0].value,  # e_entry
        0,  # e_phoff: no program headers
        shoff,
        0,  # e_flags: SBPF v0
        64,
        56,
        0,
        64,
        len(headers),
        len(headers) - 1,  # .shstrtab is last
    )
    out[:64] = header
    return bytes(out)


def clang_path() -> str:
    clang = os.environ.get("GRIDMETER_CLANG", DEFAULT_CLANG)
    found = shutil.which(clang)
    if not found:
        raise BuildError(f"{clang} not found: install it (scripts/bootstrap installs clang-14 on Debian)")
    return found


def compile_object(source_dir: Path, obj_path: Path) -> bytes:
    """Compile oracle.c (relative path, cwd = source dir, prefix maps) into a BPF object; returns its bytes."""
    cmd = [
        clang_path(),
        *CLANG_FLAGS,
        f"-ffile-prefix-map={source_dir}=.",
        "-c",
        SOURCE_NAME,
        "-o",
        str(obj_path),
    ]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "SOURCE_DATE_EPOCH": "0"}
    proc = subprocess.run(cmd, cwd=source_dir, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"clang failed ({' '.join(cmd)}):\n{proc.stderr}")
    return obj_path.read_bytes()


def build_bytes(source_dir: Path = PROGRAM_DIR) -> bytes:
    with tempfile.TemporaryDirectory(prefix="gridmeter-oracle-") as tmp:
        return link(compile_object(source_dir, Path(tmp) / "oracle.o"))


def build(source_dir: Path = PROGRAM_DIR, out: Path | None = None) -> Path:
    out = out or source_dir / OUTPUT_NAME
    data = build_bytes(source_dir)
    tmp = out.with_suffix(".so.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


def check(source_dir: Path = PROGRAM_DIR) -> tuple[bool, str]:
    committed = source_dir / OUTPUT_NAME
    if not committed.exists():
        return False, f"{committed} is missing: run python -m localchain.build"
    rebuilt = build_bytes(source_dir)
    old = committed.read_bytes()
    if rebuilt != old:
        return False, (
            f"{committed} differs from a rebuild of {SOURCE_NAME} "
            f"(committed sha256 {hashlib.sha256(old).hexdigest()[:16]}, rebuilt "
            f"{hashlib.sha256(rebuilt).hexdigest()[:16]}): run python -m localchain.build and commit"
        )
    return True, f"{committed.name} is identical to a rebuild (sha256 {hashlib.sha256(old).hexdigest()})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m localchain.build", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="rebuild in a temp dir and compare with the committed .so")
    args = ap.parse_args(argv)
    try:
        if args.check:
            ok, msg = check()
            print(msg, file=sys.stderr if not ok else sys.stdout)
            return 0 if ok else 1
        out = build()
        data = out.read_bytes()
        print(f"wrote {out} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})")
        return 0
    except BuildError as e:
        print(f"build failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
