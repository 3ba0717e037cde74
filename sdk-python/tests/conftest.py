"""Fixtures: a real kernel node per test (see support.Node)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from support import Node


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Makes nodes (started); all are stopped after the test."""
    made: list[Node] = []

    def make(port: int = 0, env: dict[str, str] | None = None) -> Node:
        node = Node(tmp_path / f"node{len(made)}.log", env).start(port)
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()


@pytest.fixture
async def node(node_factory: Callable[..., Node]) -> AsyncIterator[Node]:
    """One node for the test."""
    n = node_factory()
    yield n
    await n.close_admin()
