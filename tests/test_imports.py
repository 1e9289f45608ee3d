"""The package's import graph: no cycle (lazy imports inside functions included), the library never imports the
CLI module, and argument parsing lives only in the `*_cli.py` modules of the subcommands."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vggt_train"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: modules of the package it imports anywhere in its body} ("from a import b" counts a.b when b is a
    module, else a)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # a.b.c where c is a name: its module a.b
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _without_package_inits(graph):
    # a package's __init__ that re-exports its modules is not in a cycle with them: edges into packages are dropped
    packages = {m for m in graph if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}
    return {k: {d for d in v if d not in packages} for k, v in graph.items()}


def test_no_import_cycle():
    found = cycles(_without_package_inits(import_graph()))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_library_never_imports_the_cli_module():
    graph = import_graph()
    users = sorted(m for m, deps in graph.items() if "vggt_train.cli" in deps and m not in ("vggt_train.__main__",))
    assert not users, f"import vggt_train.cli: {users}"


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _imports_argparse(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "argparse":
            return True
    return False


def test_every_subcommand_lives_in_a_cli_module_and_only_those_parse_arguments():
    from vggt_train.cli import SUBCOMMANDS

    for command, (module, _) in SUBCOMMANDS.items():
        assert module.rpartition(".")[2].endswith("_cli"), f"{command}: {module} is not named *_cli"
        assert (PACKAGE.parent / (module.replace(".", "/") + ".py")).is_file(), f"{command}: {module} does not exist"
    parsers = sorted(_module_name(p) for p in PACKAGE.rglob("*.py") if _imports_argparse(p))
    assert parsers and all(m == "vggt_train.cli" or m.endswith("_cli") for m in parsers), parsers


# Imported inside functions without further comment: heavy or optional third-party packages, so that a light command
# (`vggt-train --help`, reading a config, a conversion worker) does not pay for them.
HEAVY_OR_OPTIONAL = {"accelerate", "datasets", "deepspeed", "huggingface_hub", "matplotlib", "pyarrow", "pycolmap",
                     "safetensors", "scipy", "tensorboard", "torch_npu", "transformers", "trimesh", "wandb"}


def lazy_imports_without_reason() -> list[str]:
    """In-function imports of anything else that carry no comment (on their line, or the two lines above them or
    above the run of imports they belong to) saying why."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        for fn in ast.walk(ast.parse(text, str(path))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    roots = {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    roots = {(node.module or "").split(".")[0]}
                else:
                    continue
                if roots <= HEAVY_OR_OPTIONAL:
                    continue
                start = node.lineno - 1  # the comment may sit above a run of imports that share its reason
                while start > 0 and lines[start - 1].strip().startswith(("import ", "from ")):
                    start -= 1
                context = lines[max(0, start - 2):node.end_lineno]
                if not any("#" in line for line in context):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def test_imports_sit_at_module_top_unless_a_reason_is_stated():
    found = lazy_imports_without_reason()
    assert not found, "in-function imports without a stated reason (move them to the top, or say why):\n" + "\n".join(found)
