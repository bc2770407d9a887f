"""Build dist/imgrep.pyz: a reproducible zipapp of the imgrep package.

Entries are written in sorted order with a fixed timestamp and permissions, so the
same sources always give the same bytes (``zipfile.write`` would record mtimes).
Each module also ships as an unchecked-hash ``.pyc`` beside its source: zipimport
never writes bytecode, so without them every start would compile the whole package
(about 0.3 s). An interpreter of another version ignores them and reads the source.
"""

from __future__ import annotations

import argparse
import io
import py_compile
import tempfile
import zipfile
from pathlib import Path

__all__ = ["build", "main"]

ROOT = Path(__file__).resolve().parent
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
SHEBANG = b"#!/usr/bin/env python3\n"
MAIN = b"import sys\nfrom imgrep.cli import main\nsys.exit(main())\n"


def _entry(name: str, data: bytes) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.create_system = 3  # unix, whatever machine builds it
    return info, data


def _bytecode(path: Path, name: str) -> bytes:
    with tempfile.TemporaryDirectory() as scratch:
        compiled = Path(scratch) / "module.pyc"
        py_compile.compile(str(path), cfile=str(compiled), dfile=name, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        return compiled.read_bytes()


def build(source: Path = ROOT / "imgrep", output: Path = ROOT / "dist" / "imgrep.pyz") -> Path:
    files = sorted(p for p in source.rglob("*.py") if "__pycache__" not in p.parts)
    entries = []
    for path in files:
        name = path.relative_to(source.parent).as_posix()
        entries.append(_entry(name, path.read_bytes()))
        entries.append(_entry(name + "c", _bytecode(path, name)))
    entries.append(_entry("__main__.py", MAIN))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, data in sorted(entries, key=lambda e: e[0].filename):
            archive.writestr(info, data, compresslevel=9)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(SHEBANG + buffer.getvalue())
    output.chmod(0o755)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "dist" / "imgrep.pyz")
    args = parser.parse_args(argv)
    print(build(output=args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
