"""The README's programs, run as written against a real node: each
```python block is a file named by its first line (`# greeter.py: …`)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from kernel_sdk import Client
from support import Node, eventually

README = Path(__file__).resolve().parents[1] / "README.md"


def programs() -> dict[str, str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    named = {}
    for block in blocks:
        first = block.splitlines()[0]
        match = re.match(r"# (\w+\.py):", first)
        assert match, f"a README python block must start with `# name.py: …`: {first!r}"
        named[match.group(1)] = block
    return named


async def run(path: Path, url: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(path), env=dict(os.environ, KERNEL_URL=url),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, f"{path.name} failed:\n{err.decode()}"
    return out.decode()


async def test_the_readme_programs_run(node: Node, tmp_path: Path) -> None:
    files = programs()
    assert sorted(files) == ["caller.py", "errors.py", "greeter.py", "subscriber.py", "tracing.py"]
    for name, code in files.items():
        (tmp_path / name).write_text(code)

    greeter = subprocess.Popen([sys.executable, str(tmp_path / "greeter.py")],
                               env=dict(os.environ, KERNEL_URL=node.url),
                               stderr=subprocess.DEVNULL)
    try:
        async with Client(node.url) as client:
            async def up() -> None:
                await client.call("greet.shout", b"x", timeout=1)

            await eventually(up)

        assert (await run(tmp_path / "caller.py", node.url)).splitlines() == [
            "hello, ada from readme-caller", "QUIET"]

        errors = (await run(tmp_path / "errors.py", node.url)).splitlines()
        assert errors[0] == "NOT_FOUND | nobody is not here"
        assert errors[1].startswith("   at greet.hello greeter ")
        assert errors[2].startswith("INVALID_ARGUMENT | ") and "name" in errors[2]
        assert errors[-2] == "NOT_FOUND | no provider for service `greet.nothing`"
        assert errors[-1].startswith("   at greet.nothing - ")

        assert (await run(tmp_path / "subscriber.py", node.url)).splitlines() == [
            "order.created {'id': 1} attempt 1", "order.created {'id': 1} attempt 2",
            "bulk refused: 0"]

        traced = await run(tmp_path / "tracing.py", node.url)
        assert "{'trace_id': '4bf92f3577b34da6a3ce929d0e0e4736'}" in traced
        assert '"name": "plugin.handle"' in traced and '"kind": "SpanKind.SERVER"' in traced
    finally:
        greeter.terminate()
        assert greeter.wait(10) == 0  # SIGTERM stops `plugin.run()` cleanly
