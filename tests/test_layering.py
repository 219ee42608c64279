"""Architecture: every twinlm module sits in a layer and imports only from its own layer or below, with no cycles.

The import graph is read from the source with ``ast`` (nothing is imported): module-level and function-level
imports, ``TYPE_CHECKING`` blocks, relative (``from ..errors import X``) and absolute (``import twinlm.model``)
forms, and ``importlib.import_module("twinlm.x")`` with a literal name.
"""

from __future__ import annotations

import ast
import fnmatch
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "twinlm"
ROOT = "__init__"  # how the package's own __init__.py is named below; a sub-package's __init__ is the package name

# Lowest first. A module may import from its own layer and any lower one. Names are module paths inside twinlm
# ("data.tasks"); a sub-package's __init__.py is the package name ("hf"); entries may be fnmatch patterns
# ("hf.*", "cli*"); an exact name beats a pattern, a longer pattern beats a shorter one.
LAYERS: list[list[str]] = [
    [ROOT, "errors", "data", "cjk"],  # 0: the package markers, the error types, the CJK character blocks
    ["config", "tensorfiles", "trainstate"],  # 1: configuration, pickle-free tensor and training-state files
    ["attention"],  # 2
    ["model"],  # 3: the backbone
    ["objectives", "heads", "data.readers", "data.exclude", "evaluate", "plots"],  # 4: on the backbone; plain helpers
    ["tokenizer", "textstream", "data.corpus", "data.segment", "data.blocks", "data.tasks"],  # 5: text -> ids
    ["checkpoint", "runfolder", "hf", "hf.*"],  # 6: model folders on disk: twinlm and Hugging Face formats
    ["loading"],  # 7: the one door in for a model
    ["train", "distributed"],  # 8: the loop; FSDP/DDP wrapping and sharded checkpoints
    ["pretrain", "runs", "finetune", "processors", "decoding", "generate", "beam", "masked", "scoring",
     "measures"],  # 9: training runs, decoding, scoring
    ["pipelines", "quickstart"],  # 10
    ["compare", "compare.*", "glue", "glue.*", "serve", "serve.*"],  # 11
    ["cli*", "__main__"],  # 12: command line
]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # file:line of the import statement


# --------------------------------------------------------------------------------------------------- the reader


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or ROOT


def find_modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts}


def _join(parts: list[str]) -> str:
    return ".".join(parts) or ROOT


def import_edges(root: Path, package: str = "twinlm") -> tuple[dict[str, Path], list[Edge], list[str]]:
    """(modules, edges between them, problems: imports of twinlm modules that do not exist)."""
    modules = find_modules(root)
    edges: list[Edge] = []
    problems: list[str] = []

    def parts_of(name: str) -> list[str]:
        return [] if name == ROOT else name.split(".")

    def target(parts: list[str], where: str) -> str | None:
        name = _join(parts)
        if name in modules:
            return name
        problems.append(f"{where}: imports {package}.{name}, which is not a module of {root}")
        return None

    def submodule_or_package(base: list[str], attr: str) -> list[str]:
        """`from base import attr`: the submodule base.attr when there is one, else base itself."""
        return [*base, attr] if _join([*base, attr]) in modules else base

    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        here = parts_of(name) if is_package else parts_of(name)[:-1]  # the package this module sits in
        for node in ast.walk(tree):
            where = f"{path.relative_to(root.parent)}:{getattr(node, 'lineno', 0)}"
            found: list[list[str]] = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    top, *rest = alias.name.split(".")
                    if top == package:
                        found.append(rest)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    if node.level - 1 > len(here):
                        problems.append(f"{where}: relative import goes above the {package} package")
                        continue
                    base = here[:len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
                else:
                    top, *base = (node.module or "").split(".")
                    if top != package:
                        continue
                for alias in node.names:
                    found.append(base if alias.name == "*" else submodule_or_package(base, alias.name))
            elif isinstance(node, ast.Call) and _is_import_module(node):
                text = node.args[0].value
                if text.startswith("."):  # import_module(".x", __package__)
                    level = len(text) - len(text.lstrip("."))
                    if level - 1 <= len(here):
                        found.append(here[:len(here) - (level - 1)] + [p for p in text.lstrip(".").split(".") if p])
                else:
                    top, *rest = text.split(".")
                    if top == package:
                        found.append(rest)
            for parts in found:
                resolved = target(parts, where)
                if resolved is not None:
                    edges.append(Edge(name, resolved, where))
    return modules, edges, problems


def _is_import_module(node: ast.Call) -> bool:
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return (called in ("import_module", "__import__") and bool(node.args)
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))


# ------------------------------------------------------------------------------------------------- the checks


def layer_of(name: str, layers: list[list[str]] = LAYERS) -> int | None:
    exact = [i for i, layer in enumerate(layers) if name in layer]
    if exact:
        return exact[0]
    matches = [(len(pattern), i) for i, layer in enumerate(layers) for pattern in layer
               if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(name, pattern)]
    return max(matches)[1] if matches else None


def unassigned(modules: dict[str, Path], layers: list[list[str]] = LAYERS) -> list[str]:
    out = []
    for name, path in sorted(modules.items()):
        if layer_of(name, layers) is None:
            where = path.relative_to(SRC.parent) if path.is_relative_to(SRC.parent) else path
            out.append(f"twinlm module '{name}' ({where}) is in no layer: add "
                       f"'{name}' to the list of the layer it belongs to in LAYERS at the top of "
                       f"tests/test_layering.py (the lowest layer whose modules it needs)")
    return out


def upward_imports(edges: list[Edge], layers: list[list[str]] = LAYERS) -> list[str]:
    out = []
    for e in edges:
        low, high = layer_of(e.source, layers), layer_of(e.target, layers)
        if low is not None and high is not None and high > low:
            out.append(f"{e.where}: {e.source} (layer {low}) imports {e.target} (layer {high}), a higher layer")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle (a, b, ..., a) per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]
    nodes = sorted(set(graph) | {t for ts in graph.values() for t in ts})

    def visit(v: str) -> None:  # recursion depth is bounded by the number of modules (tens)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(sorted(component))

    for v in nodes:
        if v not in index:
            visit(v)
    return [_cycle_through(c, graph) for c in components]


def _cycle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, ())):
            if w == start:
                return [*paths[v], start]
            if w in members and w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return [*component, start]  # unreachable for a real component


def graph_of(edges: list[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
    return graph


def cycle_messages(graph: dict[str, set[str]]) -> list[str]:
    return [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]


# ---------------------------------------------------------------------------------------------- the real tree


@pytest.fixture(scope="module")
def tree():
    assert SRC.is_dir(), SRC
    return import_edges(SRC)


def test_layers_name_each_entry_once():
    entries = [e for layer in LAYERS for e in layer]
    assert len(entries) == len(set(entries)), sorted(e for e in entries if entries.count(e) > 1)


def test_every_module_is_in_a_layer(tree):
    modules, _, _ = tree
    assert {"model", "config", "errors", ROOT} <= set(modules)  # the reader found the package
    problems = unassigned(modules)
    assert not problems, "\n".join(problems)


def test_imports_name_real_modules(tree):
    _, edges, problems = tree
    assert len(edges) > 20  # the reader found the imports
    assert not problems, "\n".join(problems)


def test_no_module_imports_a_higher_layer(tree):
    _, edges, _ = tree
    problems = upward_imports(edges)
    assert not problems, "\n".join(problems)


def test_the_import_graph_has_no_cycle(tree):
    _, edges, _ = tree
    problems = cycle_messages(graph_of(edges))
    assert not problems, "\n".join(problems)


def test_known_edges_of_the_tree_are_seen(tree):
    """The reader finds imports of every form the tree uses (guards against a checker that sees nothing)."""
    _, edges, _ = tree
    found = {(e.source, e.target) for e in edges}
    assert ("model", "attention") in found and ("attention", "config") in found, "from .x import y"
    assert ("data.tasks", "errors") in found, "from ..x import y"
    assert ("heads", "model") in found and ("loading", "heads") in found


# --------------------------------------------------------------------------------------- the checker can fail


def test_checker_catches_the_old_hf_pipelines_cycle():
    """hf.py's convert_to_hf once imported pipelines.load_pretrained, and pipelines loaded through hf."""
    old = [Edge("hf", "pipelines", "hf.py:1"), Edge("pipelines", "loading", "pipelines.py:1"),
           Edge("loading", "hf", "loading.py:1"), Edge("loading", "model", "loading.py:2")]
    assert upward_imports(old) == ["hf.py:1: hf (layer 6) imports pipelines (layer 10), a higher layer"]
    assert cycle_messages(graph_of(old)) == ["import cycle: hf -> pipelines -> loading -> hf"]
    # the direct form of it too
    assert cycle_messages({"hf": {"pipelines"}, "pipelines": {"hf"}}) == ["import cycle: hf -> pipelines -> hf"]


def test_checker_catches_the_old_edge_added_to_the_real_tree(tree):
    _, edges, _ = tree
    into_hf = [e.target for e in edges if e.source == "loading" and (e.target == "hf" or e.target.startswith("hf."))]
    hf = into_hf[0] if into_hf else "hf"
    with_old = [*edges, Edge(hf, "pipelines", "hf.py:1")]
    assert any(f"{hf} (layer 6) imports pipelines (layer 10)" in p for p in upward_imports(with_old))
    if into_hf:  # pipelines -> loading -> hf closes the loop again
        assert any(hf in c and "pipelines" in c for c in cycles(graph_of(with_old)))


def test_checker_reports_cycles_separately_and_not_for_a_dag():
    dag = {"a": {"b", "c"}, "b": {"c"}, "c": set()}
    assert cycles(dag) == []
    two = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"f"}}
    assert cycles(two) == [["a", "b", "a"], ["c", "d", "e", "c"], ["f", "f"]]


def test_checker_asks_for_unassigned_modules():
    problems = unassigned({"model": Path("model.py"), "newthing": Path("newthing.py")})
    assert len(problems) == 1
    assert "'newthing'" in problems[0] and "LAYERS" in problems[0] and "tests/test_layering.py" in problems[0]


def test_layer_patterns():
    assert layer_of("hf") == layer_of("hf.convert") == layer_of("checkpoint")
    assert layer_of("cli") == layer_of("cli_generate") == layer_of("cli.registry") == len(LAYERS) - 1
    assert layer_of("data") == 0 and layer_of("data.readers") == 4 and layer_of("data.tasks") == 5
    assert layer_of("data.unknown") is None and layer_of("hfx") is None


def test_reader_resolves_every_import_form(tmp_path):
    pkg = tmp_path / "twinlm"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "__version__ = '0'\n",
        "a.py": "import os\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import D\n"
                "def f():\n    from .b import x\n    return x\n",
        "b.py": "import twinlm.c\nfrom twinlm import sub\nfrom twinlm.sub import e as E\nx = 1\n",
        "c.py": "from . import __version__, a\nfrom .sub.e import y\n",
        "d.py": "import importlib\nm = importlib.import_module('twinlm.c')\nfrom .missing import z\n"
                "n = importlib.import_module('.sub', __package__)\n",
        "sub/__init__.py": "from .e import y\n",
        "sub/e.py": "from .. import a\nfrom ..b import x\nfrom ...outside import q\ny = 2\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    modules, edges, problems = import_edges(pkg)
    assert set(modules) == {ROOT, "a", "b", "c", "d", "sub", "sub.e"}
    assert {(e.source, e.target) for e in edges} == {
        ("a", "d"), ("a", "b"),  # TYPE_CHECKING and function-level
        ("b", "c"), ("b", "sub"), ("b", "sub.e"),  # absolute forms
        ("c", ROOT), ("c", "a"), ("c", "sub.e"),  # from . import attribute / submodule, dotted relative
        ("d", "c"), ("d", "sub"),  # importlib with a literal name
        ("sub", "sub.e"), ("sub.e", "a"), ("sub.e", "b"),  # relative from inside a sub-package
    }
    assert any("a.py:6" in e.where for e in edges if (e.source, e.target) == ("a", "b"))
    assert len(problems) == 2
    assert any("twinlm.missing, which is not a module" in p for p in problems)
    assert any("above the twinlm package" in p for p in problems)
    assert cycles(graph_of(edges)) == [["a", "b", "c", "a"]]
