"""The house holds its shape (docs/style.md, docs/design.md "Layout"): no import cycle between modules or
packages, function-local imports included; stages import no other stage except the quickstart calling them;
studies and tools import no stage; the labeller options the studies use match the label stage's."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from prefixvalue.sampling.labelling import LabellerOptions
from prefixvalue.stages.label import LabelConfig

from conftest import REPO

SRC = REPO / "src"


def _modules() -> dict[str, Path]:
    mods = {}
    for f in SRC.rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the prefixvalue modules it imports anywhere in its text (function-local imports too)."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        package = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                target = resolve(name)
                if target and target != m and not m.startswith(target + "."):
                    edges[m].add(target)
    return edges


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (a list of nodes), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for t in sorted(graph.get(n, ())):
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state and (found := visit(t)):
                return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_between_modules_or_packages() -> None:
    mods = _modules()
    edges = _edges(mods)
    assert _cycle(edges) is None, f"module cycle: {' -> '.join(_cycle(edges) or [])}"

    def package(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[:2]) if len(parts) > 1 else m

    packages: dict[str, set[str]] = {}
    for m, targets in edges.items():
        p = package(m)  # prefixvalue.X: a subpackage, or a top-level module as its own unit
        packages.setdefault(p, set()).update(
            package(t) for t in targets if package(t) != p and package(t) != "prefixvalue"
        )
    found = _cycle(packages)
    assert found is None, f"package cycle: {' -> '.join(found or [])}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_stages_import_no_other_stage_and_studies_and_tools_no_stage() -> None:
    edges = _edges(_modules())
    for m, targets in edges.items():
        stages = {t for t in targets if t.startswith("prefixvalue.stages.")}
        if m.startswith("prefixvalue.stages.") and m != "prefixvalue.stages.quickstart":
            assert not stages, f"{m} imports the stage(s) {sorted(stages)}"
        if m.startswith(("prefixvalue.studies", "prefixvalue.tools", "prefixvalue.evaluation", "prefixvalue.value")):
            assert not stages, f"{m} imports the stage(s) {sorted(stages)}"


def test_labeller_options_have_the_label_stages_defaults() -> None:
    label = LabelConfig()
    for f in dataclasses.fields(LabellerOptions):
        assert getattr(LabellerOptions(), f.name) == getattr(label, f.name), f.name
