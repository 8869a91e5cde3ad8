"""sBPF v0 relinker: a clang BPF relocatable object -> a shared object the Solana loader accepts (pure).

`link` is a pure function of the relocatable object's bytes. It produces the layout the
Solana loader (solana-sbpf's ELF loader) accepts for SBPF v0, as tests/localchain/test_build.py checks by
loading and running the output in LiteSVM:
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

import struct
from dataclasses import dataclass

__all__ = ["ENTRYPOINT", "SYSCALLS", "BuildError", "link"]

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


@dataclass(frozen=True)
class _Layout:
    """Where the merged sections go: .text right after the ELF header, .rodata after it."""

    text_sec: _Section
    text_off: int
    text: bytearray
    rodata_off: int
    rodata: bytearray
    ro_base: dict[int, int]  # input section index -> offset inside the merged .rodata

    def vaddr(self, sym: _Symbol, addend: int, where: str) -> int:
        if sym.shndx == self.text_sec.index:
            return MM_PROGRAM_START + self.text_off + sym.value + addend
        if sym.shndx in self.ro_base:
            return MM_PROGRAM_START + self.rodata_off + self.ro_base[sym.shndx] + sym.value + addend
        raise BuildError(f"{where}: relocation against {sym.name!r} in an unsupported section")


def _merge_sections(sections: list[_Section]) -> _Layout:
    alloc = [s for s in sections if s.flags & SHF_ALLOC and s.size > 0]
    texts = [s for s in alloc if s.flags & SHF_EXECINSTR]
    if len(texts) != 1 or texts[0].name != ".text":
        raise BuildError(f"expected exactly one .text section, got {[s.name for s in texts]}")
    ro_secs = [s for s in alloc if not s.flags & SHF_EXECINSTR]
    for s in ro_secs:
        if s.flags & SHF_WRITE or s.type == SHT_NOBITS:
            raise BuildError(f"writable section {s.name}: mutable globals are rejected by the loader")
    text_off = 0x40  # right after the ELF header (no program headers)
    text = bytearray(texts[0].data)
    ro_base: dict[int, int] = {}
    rodata = bytearray()
    for s in ro_secs:
        start = _align(len(rodata), max(s.align, 1))
        rodata.extend(b"\0" * (start - len(rodata)))
        ro_base[s.index] = start
        rodata.extend(s.data)
    return _Layout(texts[0], text_off, text, _align(text_off + len(text), 8), rodata, ro_base)


def _relocate_text(lay: _Layout, rtype: int, sym: _Symbol, r_offset: int, where: str,
                   syscall_calls: list[tuple[int, str]], relocated_calls: set[int]) -> None:
    text = lay.text
    if rtype == R_BPF_64_64:
        if text[r_offset] != OP_LDDW:
            raise BuildError(f"{where}: R_BPF_64_64 not on lddw")
        addend = struct.unpack_from("<i", text, r_offset + 4)[0]
        addr = lay.vaddr(sym, addend, where)
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
        elif sym.shndx == lay.text_sec.index and sym.type == STT_FUNC:
            rel_slots = sym.value // 8 - (r_offset // 8 + 1)
            struct.pack_into("<i", text, r_offset + 4, rel_slots)
        else:
            raise BuildError(f"{where}: call relocation against {sym.name!r} unsupported")
    else:
        raise BuildError(f"{where}: unsupported relocation type {rtype}")


def _relocate(lay: _Layout, sections: list[_Section], symbols: list[_Symbol]) -> list[tuple[int, str]]:
    """Apply every relocation of an allocated section; returns the syscall call sites (offset in .text, name)."""
    syscall_calls: list[tuple[int, str]] = []
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
            if target.index == lay.text_sec.index:
                _relocate_text(lay, rtype, sym, r_offset, where, syscall_calls, relocated_calls)
            elif target.index in lay.ro_base:
                if rtype != R_BPF_64_ABS64:
                    raise BuildError(f"{where}: unsupported relocation type {rtype} in rodata")
                pos = lay.ro_base[target.index] + r_offset
                addend = struct.unpack_from("<q", lay.rodata, pos)[0]
                struct.pack_into("<Q", lay.rodata, pos, lay.vaddr(sym, addend, where))
            else:
                raise BuildError(f"{where}: relocation in unsupported section")
    _normalize_calls(lay.text, relocated_calls)
    return syscall_calls


def _normalize_calls(text: bytearray, relocated_calls: set[int]) -> None:
    """Every call: clear the source register; calls that were not relocated are clang-resolved internal
    pc-relative calls and must not look like syscalls (-1). (The second slot of an lddw is data, but its opcode
    byte is 0: never mistaken for a call.)"""
    for off in range(0, len(text), 8):
        if text[off] == OP_CALL:
            text[off + 1] &= 0x0F
            if off not in relocated_calls and struct.unpack_from("<i", text, off + 4)[0] == -1:
                raise BuildError(f".text+{off:#x}: unrelocated call -1")


@dataclass(frozen=True)
class _Dynamic:
    dynsym: bytes
    dynstr: bytes
    reldyn: bytes
    dynamic: bytes
    dynamic_off: int
    dynsym_off: int
    dynstr_off: int
    reldyn_off: int


DYNAMIC_SIZE = 8 * 16  # eight (tag, value) pairs


def _dynamic_tables(text_off: int, after_rodata: int, syscall_calls: list[tuple[int, str]]) -> _Dynamic:
    """.dynsym/.dynstr with one symbol per syscall name (sorted, for determinism), .rel.dyn and .dynamic."""
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
    dynamic_off = _align(after_rodata, 8)
    dynsym_off = dynamic_off + DYNAMIC_SIZE
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
    assert len(dynamic) == DYNAMIC_SIZE
    return _Dynamic(bytes(dynsym), bytes(dynstr), bytes(reldyn), dynamic, dynamic_off, dynsym_off, dynstr_off,
                    reldyn_off)


def _write_elf(lay: _Layout, dyn: _Dynamic, entry: int) -> bytes:
    """Section contents, section headers (address == offset for allocated sections) and the ELF header."""
    shstrtab = bytearray(b"\0")
    sh_names: dict[str, int] = {}
    for n in (".text", ".rodata", ".dynamic", ".dynsym", ".dynstr", ".rel.dyn", ".shstrtab"):
        sh_names[n] = len(shstrtab)
        shstrtab.extend(n.encode() + b"\0")
    shstrtab_off = dyn.reldyn_off + len(dyn.reldyn)
    shoff = _align(shstrtab_off + len(shstrtab), 8)
    out = bytearray(shoff)
    for off, data in ((lay.text_off, lay.text), (lay.rodata_off, lay.rodata), (dyn.dynamic_off, dyn.dynamic),
                      (dyn.dynsym_off, dyn.dynsym), (dyn.dynstr_off, dyn.dynstr), (dyn.reldyn_off, dyn.reldyn),
                      (shstrtab_off, shstrtab)):
        out[off : off + len(data)] = data
    # (name, type, flags, offset, size, link, info, align, entsize)
    headers = [(0, 0, 0, 0, 0, 0, 0, 0, 0)]
    headers.append((sh_names[".text"], SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, lay.text_off, len(lay.text), 0, 0,
                    8, 0))
    if lay.rodata:
        headers.append((sh_names[".rodata"], SHT_PROGBITS, SHF_ALLOC, lay.rodata_off, len(lay.rodata), 0, 0, 8, 0))
    n_dynamic = len(headers)
    n_dynsym, n_dynstr = n_dynamic + 1, n_dynamic + 2
    headers += [
        (sh_names[".dynamic"], SHT_DYNAMIC, SHF_ALLOC | SHF_WRITE, dyn.dynamic_off, DYNAMIC_SIZE, n_dynstr, 0, 8,
         16),
        (sh_names[".dynsym"], SHT_DYNSYM, SHF_ALLOC, dyn.dynsym_off, len(dyn.dynsym), n_dynstr, 1, 8, 24),
        (sh_names[".dynstr"], SHT_STRTAB, SHF_ALLOC, dyn.dynstr_off, len(dyn.dynstr), 0, 0, 1, 0),
        (sh_names[".rel.dyn"], SHT_REL, SHF_ALLOC, dyn.reldyn_off, len(dyn.reldyn), n_dynsym, 0, 8, 16),
        (sh_names[".shstrtab"], SHT_STRTAB, 0, shstrtab_off, len(shstrtab), 0, 0, 1, 0),
    ]
    for name, typ, flags, off, size, lnk, info, align, ent in headers:
        addr = off if flags & SHF_ALLOC else 0
        out.extend(struct.pack("<IIQQQQIIQQ", name, typ, flags, addr, off, size, lnk, info, align, ent))
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    # e_type, e_machine, e_version, e_entry, e_phoff (no program headers), e_shoff, e_flags (SBPF v0), e_ehsize,
    # e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx (.shstrtab is last)
    out[:64] = ident + struct.pack("<HHIQQQIHHHHHH", ET_DYN, EM_BPF, 1, entry, 0, shoff, 0, 64, 56, 0, 64,
                                   len(headers), len(headers) - 1)
    return bytes(out)


def link(obj: bytes) -> bytes:
    """Relink a clang BPF relocatable object into an sBPF v0 shared object (pure, deterministic)."""
    sections, symbols = _parse_object(obj)
    lay = _merge_sections(sections)
    syscall_calls = _relocate(lay, sections, symbols)
    entry = [s for s in symbols if s.name == ENTRYPOINT and s.shndx == lay.text_sec.index]
    if len(entry) != 1:
        raise BuildError(f"no {ENTRYPOINT!r} function in .text")
    dyn = _dynamic_tables(lay.text_off, lay.rodata_off + len(lay.rodata), syscall_calls)
    return _write_elf(lay, dyn, lay.text_off + entry[0].value)
