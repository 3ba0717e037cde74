"""Build hooks: the `kernel.v1` protobuf modules are generated from
`proto/` while building (see gen_proto.py), never committed.

Everything static lives in pyproject.toml. The runtime `protobuf` floor is
computed here because generated code refuses to load on a protobuf runtime
older than the protoc that generated it: the floor is whatever the
grpcio-tools used for this build requires.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent


def _gen_proto() -> ModuleType:
    # Loaded by path: under build isolation this directory is not importable.
    spec = importlib.util.spec_from_file_location("_kernel_gen_proto", HERE / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPy(build_py):
    """Generates `kernel_sdk/_gen` into the build tree (or, for editable
    installs, into the source tree, where the package is imported from)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            out = HERE / "kernel_sdk" / "_gen"
        else:
            out = Path(self.build_lib) / "kernel_sdk" / "_gen"
        _gen_proto().generate(out)


class Sdist(sdist):
    """Ships the protos inside the sdist (they live outside this directory
    in the repository), so the sdist builds on its own."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        src = _gen_proto().find_proto_dir() / "kernel"
        shutil.copytree(src, Path(base_dir) / "proto" / "kernel", dirs_exist_ok=True)


def _protobuf_floor() -> str:
    for req in importlib.metadata.requires("grpcio-tools") or []:
        m = re.match(r"protobuf\b.*?>=\s*([\d.]+)", req.replace(" ", ""))
        if m:
            return m.group(1)
    return "5.26.1"


setup(
    cmdclass={"build_py": BuildPy, "sdist": Sdist},
    install_requires=[
        "grpcio>=1.62",
        f"protobuf>={_protobuf_floor()}",
        "googleapis-common-protos>=1.60",
    ],
)
