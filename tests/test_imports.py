"""Dependencies point one way: the CLI, the service and bench → evaluation → indexer → attribution; only the CLI
and tests import the demo (its builder); no import cycles.

Every ``import`` in every module counts, the ones inside functions too: a function-local
import that hides a cycle is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("attribution", "indexer", "demo", "evaluation", "service", "headwater", "bench")
ALLOWED: dict[str, set[str]] = {
    "attribution": {"attribution"},
    "indexer": {"attribution", "indexer"},
    "evaluation": {"attribution", "indexer", "evaluation"},
    "demo": {"attribution", "indexer", "evaluation", "demo"},
    "service": {"attribution", "indexer", "evaluation", "service"},
    "headwater": {"attribution", "indexer", "demo", "evaluation", "service", "headwater"},
    "bench": {"attribution", "indexer", "evaluation", "service", "headwater", "bench"},
}
"""What each package may import (of ours): the core none of its users, the indexer only the core. The demo's facts,
corpus, tokenizer and trainer, and the readers of a built demo, belong to evaluation; ``demo`` only builds it, so only
the CLI and tests import it (not evaluation, the service or bench: an index records its ground truth,
``indexer.groundtruth``)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def test_dependencies_point_one_way() -> None:
    wrong = [f"{module} imports {target}" for module, targets in graph().items() for target in targets
             if target.split(".")[0] not in ALLOWED[module.split(".")[0]]]
    assert not wrong, "wrong-way imports:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    edges = graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        for target in sorted(edges[module]):
            cycle = visit(target, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(edges):
        cycle = visit(module, [])
        assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_checker_sees_wrong_way_and_local_imports(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("import os\nfrom indexer.store import open_index\n\ndef f():\n    from demo import build\n")
    assert imports_of(source) == {"indexer.store", "indexer.store.open_index", "demo", "demo.build"}
