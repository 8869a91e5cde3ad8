"""Deterministic build of the local oracle program: C -> clang-14 BPF object -> sBPF v0 shared object.

`python -m localchain.build` compiles localchain/program/oracle.c with fixed flags and writes
localchain/program/oracle.so; `python -m localchain.build --check` rebuilds into a temporary directory and
fails if the bytes differ from the committed .so (so the binary can never drift from its source).

The relinker lives in localchain/sbpf_link.py (`link`, a pure function of the object's bytes).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from localchain.sbpf_link import BuildError, link

__all__ = ["BuildError", "build", "build_bytes", "check", "compile_object", "main"]

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
