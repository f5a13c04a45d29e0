"""No module in app/ reaches into another library's private names (they change without notice between releases).

A static scan: ``from lib import _name``, ``import lib._module``, ``lib._name`` on an imported library or on a
name imported from one, and the trio-websocket internals the simulator once used, by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"
# trio-websocket's internals the simulator's WebSocket side relied on before it moved to wsproto's public API.
TRIO_WEBSOCKET_PRIVATES = (
    "_handle_ping_event", "_handle_pong_event", "_wsproto", "_stream_lock", "_close_reason",
    "_abort_web_socket", "_reader_task", "_get_request",
)
# The type ``ArgumentParser.add_subparsers`` returns has no public name (typeshed calls it this); annotations only.
ALLOWED = {"argparse._SubParsersAction"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def foreign_private_uses(source: str) -> list[str]:
    """Each private name of another library that ``source`` imports or reaches, as ``line: text``."""
    tree = ast.parse(source)
    foreign: set[str] = set()  # local names bound to another library's modules or objects
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "app":
                    foreign.add((alias.asname or alias.name).split(".")[0])
                    if any(is_private(part) for part in alias.name.split(".")):
                        found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            if node.module.split(".")[0] == "app":
                continue
            if any(is_private(part) for part in node.module.split(".")):
                found.append(f"{node.lineno}: from {node.module} import ...")
            for alias in node.names:
                foreign.add(alias.asname or alias.name)
                if is_private(alias.name):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in foreign and ast.unparse(node) not in ALLOWED:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from trio_websocket import _impl", ["1: from trio_websocket import _impl"]),
        ("from trio._core import run", ["1: from trio._core import ..."]),
        ("import trio._core._run", ["1: import trio._core._run"]),
        ("import trio\ntrio._core.run()", ["2: trio._core"]),
        ("from wsproto import WSConnection\nWSConnection._proto", ["2: WSConnection._proto"]),
        ("from app.model import _private\nimport attrs\nattrs.__version__", []),
        ("class A:\n    def f(self):\n        return self._own", []),
    ],
)
def test_the_scan_finds_private_names_of_other_libraries(source: str, expected: list[str]) -> None:
    assert foreign_private_uses(source) == expected


@pytest.mark.parametrize("path", sorted(APP.rglob("*.py")), ids=lambda path: str(path.relative_to(APP)))
def test_no_module_in_app_uses_another_librarys_private_names(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert foreign_private_uses(source) == []
    assert [name for name in TRIO_WEBSOCKET_PRIVATES if name in source] == []
