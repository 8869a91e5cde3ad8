"""The oracle program build: clang-14 + the relinker are deterministic and the committed .so matches its source.

clang-14 is installed by scripts/bootstrap; a missing compiler fails these tests (never skipped).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from solders.transaction_metadata import TransactionMetadata

from localchain import build, sbpf_link

pytestmark = pytest.mark.integration  # runs clang-14 and the sBPF VM

REPO = Path(__file__).resolve().parents[2]
SO_PATH = build.PROGRAM_DIR / build.OUTPUT_NAME


def _copy_sources(dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in build.PROGRAM_DIR.iterdir():
        if f.suffix in (".c", ".h"):
            shutil.copy(f, dst / f.name)
    return dst


def test_committed_so_is_identical_to_a_clang14_rebuild() -> None:
    ok, msg = build.check()
    assert ok, msg


def test_check_command_exit_code() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "localchain.build", "--check"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "identical" in proc.stdout


def test_build_does_not_depend_on_the_source_path(tmp_path: Path) -> None:
    src = _copy_sources(tmp_path / "some" / "other" / "checkout")
    assert build.build_bytes(src) == SO_PATH.read_bytes()


def test_check_detects_a_stale_binary(tmp_path: Path) -> None:
    src = _copy_sources(tmp_path / "src")
    stale = bytearray(SO_PATH.read_bytes())
    stale[0x40] ^= 0xFF
    (src / build.OUTPUT_NAME).write_bytes(bytes(stale))
    ok, msg = build.check(src)
    assert not ok and "differs" in msg
    (src / build.OUTPUT_NAME).unlink()
    ok, msg = build.check(src)
    assert not ok and "missing" in msg


def _sections(elf: bytes) -> dict[str, tuple[int, int, int, int]]:
    """name -> (type, flags, addr, offset) of a built .so."""
    shoff = struct.unpack_from("<Q", elf, 40)[0]
    shnum, shstrndx = struct.unpack_from("<HH", elf, 60)
    heads = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + 64 * i) for i in range(shnum)]
    strtab_off = heads[shstrndx][4]

    def name(off: int) -> str:
        return elf[strtab_off + off : elf.index(b"\0", strtab_off + off)].decode()

    return {name(h[0]): (h[1], h[2], h[3], h[4], h[5]) for h in heads[1:]}


def test_shared_object_layout_is_what_the_sbpf_v0_loader_expects() -> None:
    elf = SO_PATH.read_bytes()
    assert elf[:4] == b"\x7fELF" and elf[4:7] == b"\x02\x01\x01"
    e_type, e_machine, _v, e_entry = struct.unpack_from("<HHIQ", elf, 16)
    e_flags = struct.unpack_from("<I", elf, 48)[0]
    assert (e_type, e_machine, e_flags) == (sbpf_link.ET_DYN, sbpf_link.EM_BPF, 0)
    secs = _sections(elf)
    assert list(secs) == [".text", ".rodata", ".dynamic", ".dynsym", ".dynstr", ".rel.dyn", ".shstrtab"]
    for name, (_t, flags, addr, off, _size) in secs.items():
        if flags & sbpf_link.SHF_ALLOC:
            assert addr == off, name
        if name != ".dynamic":
            assert not flags & sbpf_link.SHF_WRITE, name
    text_off, text_size = secs[".text"][3], secs[".text"][4]
    assert text_off <= e_entry < text_off + text_size
    # every call has source register 0; every .rel.dyn entry is a `call -1` against a known syscall
    for off in range(text_off, text_off + text_size, 8):
        if elf[off] == sbpf_link.OP_CALL:
            assert elf[off + 1] >> 4 == 0, hex(off)
    dynsym_off, dynstr_off = secs[".dynsym"][3], secs[".dynstr"][3]
    rel_off, rel_size = secs[".rel.dyn"][3], secs[".rel.dyn"][4]
    names = set()
    for r in range(rel_off, rel_off + rel_size, 16):
        r_offset, r_info = struct.unpack_from("<QQ", elf, r)
        assert r_info & 0xFFFFFFFF == sbpf_link.R_BPF_64_32
        st_name = struct.unpack_from("<I", elf, dynsym_off + 24 * (r_info >> 32))[0]
        names.add(elf[dynstr_off + st_name : elf.index(b"\0", dynstr_off + st_name)].decode())
        assert elf[r_offset] == sbpf_link.OP_CALL and struct.unpack_from("<i", elf, r_offset + 4)[0] == -1
    assert names == {
        "sol_log_",
        "sol_log_data",
        "sol_get_clock_sysvar",
        "sol_get_rent_sysvar",
        "sol_try_find_program_address",
        "sol_invoke_signed_c",
    }


# A tiny program exercising what oracle.c happens not to need after inlining: non-inlined internal calls,
# recursion, a pointer table in rodata (R_BPF_64_ABS64) and string literals.
_PROBE = r"""
typedef unsigned long long u64;
extern void sol_log_(const char *, u64);
static const char *const WORDS[3] = {"alpha", "beta", "gamma"};
static const u64 LENS[3] = {5, 4, 5};
__attribute__((noinline)) static u64 fib(u64 n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
__attribute__((noinline)) static void say(u64 i) { sol_log_(WORDS[i % 3], LENS[i % 3]); }
u64 entrypoint(unsigned char *input) {
    (void)input;
    for (u64 i = 0; i < 3; i++) say(fib(i + 3));
    return fib(10) == 55 ? 0 : 1;
}
"""


def _compile(tmp_path: Path, source: str) -> bytes:
    d = tmp_path / "probe"
    d.mkdir()
    (d / build.SOURCE_NAME).write_text(source)
    return build.compile_object(d, tmp_path / "probe.o")


def test_relinked_internal_calls_and_rodata_pointers_run_in_the_vm(tmp_path: Path) -> None:
    so = sbpf_link.link(_compile(tmp_path, _PROBE))
    svm = LiteSVM()
    pid = Pubkey.new_unique()
    svm.add_program(pid, so)
    payer = Keypair()
    svm.airdrop(payer.pubkey(), 10**9)
    bh = svm.latest_blockhash()
    msg = Message.new_with_blockhash([Instruction(pid, b"", [])], payer.pubkey(), bh)
    res = svm.send_transaction(Transaction([payer], msg, bh))
    assert isinstance(res, TransactionMetadata), res
    logged = [line.removeprefix("Program log: ") for line in res.logs() if line.startswith("Program log: ")]
    assert logged == ["gamma", "alpha", "gamma"]  # fib(3), fib(4), fib(5) = 2, 3, 5 -> WORDS[2], [0], [2]


def test_link_rejects_mutable_globals(tmp_path: Path) -> None:
    src = "typedef unsigned long long u64; u64 counter; u64 entrypoint(void *p) { (void)p; return ++counter; }"
    obj = _compile(tmp_path, src)
    with pytest.raises(sbpf_link.BuildError, match="writable section"):
        sbpf_link.link(obj)


def test_link_rejects_calls_to_unknown_functions(tmp_path: Path) -> None:
    src = (
        "typedef unsigned long long u64; extern u64 helper(u64); u64 entrypoint(void *p) { (void)p; return helper(1); }"
    )
    with pytest.raises(sbpf_link.BuildError, match="helper"):
        sbpf_link.link(_compile(tmp_path, src))
