"""The import contract of docs/architecture.md ("Who may import whom"), read from the source."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Modules any part may import; they import no other tacore module but each other.
LEAVES = {"tacore", "tacore.config", "tacore.config.__main__", "tacore.config.checks",
          "tacore.config.schema", "tacore.config.loading", "tacore.config.lenient",
          "tacore.config.reference", "tacore.errors", "tacore.events", "tacore.facts",
          "tacore.health", "tacore.histogram", "tacore.readable"}
PARTS = {"tacore.supervision", "tacore.brokering", "tacore.persistence", "tacore.observability"}
# What each package (or module) may import besides the leaves and its own modules.
MAY_IMPORT = {
    "tacore.supervision": {"tacore.runtime.spec", "tacore.runtime.loader"},
    "tacore.brokering": set(),
    "tacore.persistence": set(),
    "tacore.observability": set(),
    "tacore.runtime": {"tacore.brokering.protocol", "tacore.brokering.frames",
                       "tacore.observability.logging"},
    "tacore.control": {"tacore.access", "tacore.observability.prometheus"},
    "tacore.access": set(),
    "tacore.client": {"tacore.access", "tacore.brokering.protocol", "tacore.control.client"},
    "tacore.services": set(),
    "tacore.daemon": PARTS | {"tacore.runtime", "tacore.control"},
    "tacore.cli": PARTS | {"tacore.runtime", "tacore.control", "tacore.client", "tacore.daemon"},
}
# Allowed only inside a function, so importing the module does not import the other one:
# the spawner process imports the workers' code, the daemon does not.
LAZY = {("tacore.supervision.spawner", "tacore.runtime.child")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {module_name(p): p for p in sorted((ROOT / "tacore").rglob("*.py"))}


class Imports(ast.NodeVisitor):
    """Every tacore module a file imports, with its line and whether it is inside a function."""

    def __init__(self, module: str, is_package: bool):
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, int, bool]] = []
        self.in_function = 0

    def visit_FunctionDef(self, node):
        self.in_function += 1
        self.generic_visit(node)
        self.in_function -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node):
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:  # relative: from the package, up level - 1
            package = self.package.rsplit(".", node.level - 1)[0] if node.level > 1 \
                else self.package
            base = f"{package}.{base}" if base else package
        for alias in node.names:  # "from tacore.brokering import protocol" names a module
            self._add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in FILES else base, node)

    def _add(self, name: str, node):
        if name == "tacore" or name.startswith("tacore."):
            self.found.append((name, node.lineno, bool(self.in_function)))


def imports_of(module: str) -> list[tuple[str, int, bool]]:
    path = FILES[module]
    visitor = Imports(module, path.name == "__init__.py")
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return visitor.found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def home(module: str) -> str | None:
    """The package (or module) whose rule applies to a module: the longest that contains it."""
    return max((p for p in MAY_IMPORT if within(module, p)), key=len, default=None)


def violations(module: str, found: list[tuple[str, int, bool]]) -> list[str]:
    """One line per import of ``found`` (what ``module`` imports) that breaks the contract."""
    bad = []
    for name, line, lazy in found:
        where = f"{FILES[module].relative_to(ROOT)}:{line}: {module} imports {name}"
        if module in LEAVES:
            if name not in LEAVES:
                bad.append(f"{where}, but a leaf imports only leaves")
            continue
        own = home(module)
        if name in LEAVES or within(name, own):
            continue
        if (module, name) in LAZY:
            if not lazy:
                bad.append(f"{where} when imported; import it inside the function that needs it")
            continue
        if not any(within(name, allowed) for allowed in MAY_IMPORT[own]):
            bad.append(f"{where}, which {own} may not import")
    return bad


def broken(modules) -> list[str]:
    return [line for m in modules for line in violations(m, imports_of(m))]


def test_every_module_has_a_place_in_the_contract():
    """A new module is a leaf or belongs to a package the contract names."""
    homeless = [m for m in FILES if m not in LEAVES and home(m) is None]
    assert not homeless, f"add these to LEAVES or MAY_IMPORT (and to the docs): {homeless}"


def test_leaves_import_only_leaves():
    """config, errors, events, health and histogram depend on nothing else of tacore."""
    assert broken(sorted(LEAVES)) == []


def test_parts_never_import_one_another():
    """supervision, brokering, persistence and observability know only the leaves (and
    supervision the worker's spec and loader); only daemon and cli wire them together."""
    assert not [(part, allowed) for part in PARTS for allowed in MAY_IMPORT[part]
                if any(within(allowed, other) for other in PARTS)]
    assert broken(m for m in FILES if home(m) in PARTS) == []


def test_every_module_keeps_to_the_contract():
    """runtime, control, the clients and the services import only what the table allows."""
    assert broken(m for m in FILES if m not in LEAVES) == []


def test_the_checker_sees_violations():
    """The check itself works: an import across parts, or a lazy one made eagerly, is found."""
    visitor = Imports("tacore.brokering.broker", False)
    visitor.visit(ast.parse("import os\nfrom tacore.config import Config\n"
                            "def f():\n    from tacore.supervision import states\n"))
    assert visitor.found == [("tacore.config", 2, False), ("tacore.supervision.states", 4, True)]
    assert len(violations("tacore.brokering.broker", visitor.found)) == 1
    assert violations("tacore.supervision.spawner", [("tacore.runtime.child", 1, True)]) == []
    assert len(violations("tacore.supervision.spawner", [("tacore.runtime.child", 1, False)])) == 1


def test_pure_cores_and_leaves_do_not_load_zeromq():
    """Importing the supervisor, the broker's core or a leaf does not import zmq."""
    modules = ["tacore.supervision.supervisor", "tacore.brokering.broker", *sorted(LEAVES)]
    code = f"import sys\nfor m in {modules!r}:\n    __import__(m)\nprint('zmq' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
