"""Generates the protobuf modules of `kernel.v1` for `kernel_sdk`.

setup.py runs this at build time (the stubs are never committed); run it by
hand (`python sdk-python/gen_proto.py`) to generate them in the source tree,
for mypy or for running from a checkout.

protoc writes `from kernel.v1 import kernel_pb2`-style absolute imports. The
SDK's copies live in `kernel_sdk._gen` with those imports made relative, so
they never resolve to (or clash with) the raw `kernel.v1` stubs other tools
put on PYTHONPATH (`build/py/kernel/v1/`). Both may be imported in one
process: protobuf accepts the same file registered twice when it is
byte-identical.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("kernel/v1/kernel.proto", "kernel/v1/admin.proto")
INIT = '"""Generated from proto/kernel/v1 at build time; do not edit."""\n'


def find_proto_dir() -> Path:
    """The directory holding `kernel/v1/*.proto`: `./proto` in an sdist,
    the repository's `proto/` in a checkout."""
    for candidate in (HERE / "proto", HERE.parent / "proto"):
        if (candidate / PROTOS[0]).is_file():
            return candidate
    raise FileNotFoundError(f"kernel/v1/kernel.proto not found near {HERE}")


def generate(out_pkg: Path, proto_dir: Path | None = None) -> list[Path]:
    """Writes `kernel_pb2.py`, `admin_pb2.py` and their `.pyi` into the
    package directory `out_pkg`; returns the files written."""
    from grpc_tools import protoc  # a build-time dependency only

    src = proto_dir or find_proto_dir()
    tmp = out_pkg / "_protoc"
    tmp.mkdir(parents=True, exist_ok=True)
    # grpc_tools ships the well-known types' .proto files next to itself.
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{src}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}"]
    args += [str(src / p) for p in PROTOS]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {src}")
    written = []
    for path in sorted((tmp / "kernel" / "v1").glob("*_pb2.py*")):
        text = path.read_text()
        # `from kernel.v1 import x_pb2` and `import kernel.v1.x_pb2` -> relative.
        text = re.sub(r"^from kernel\.v1 import ", "from . import ", text, flags=re.M)
        text = re.sub(r"^import kernel\.v1\.(\w+)( as \w+)?$", r"from . import \1\2", text,
                      flags=re.M)
        target = out_pkg / path.name
        target.write_text(text)
        written.append(target)
    (out_pkg / "__init__.py").write_text(INIT)
    written.append(out_pkg / "__init__.py")
    for leftover in sorted(tmp.rglob("*"), reverse=True):
        leftover.unlink() if leftover.is_file() else leftover.rmdir()
    tmp.rmdir()
    return written


if __name__ == "__main__":
    out = generate(HERE / "kernel_sdk" / "_gen")
    print(f"gen_proto: {len(out)} files in {out[0].parent.relative_to(HERE)}", file=sys.stderr)
