"""The package's structure: every import points down the layers, and no two parts import each other.

Parts are the subpackages of `tgmae` and its top-level modules; `LAYERS` orders them bottom to
top. A module may import its own part or a lower layer's, never a higher one (function-level
imports count too), and the graph of parts and, inside each part, of modules has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tgmae

SRC = Path(tgmae.__file__).resolve().parent

# bottom to top; parts in one layer may import each other, but without a cycle
LAYERS: list[set[str]] = [
    {"errors", "textfile", "user_cache", "atomic", "lifetime", "locks", "mask_contract"},
    {"config", "autotune", "hub", "distributed"},
    {"data"},
    {"captions"},
    {"clip"},
    {"masking"},
    {"models"},
    {"weights"},
    {"viz"},
    {"train"},
    {"evaluate"},
    {"study"},
    {"commands"},
    {"cli"},
    {"__main__"},
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every `tgmae.*` module `path` imports, at any depth (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "tgmae"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "tgmae":
                continue
            for alias in node.names:  # `from tgmae.data import formats` imports a module
                sub = f"{base}.{alias.name}"
                out.add(sub if _exists(sub) else base)
    return out


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p, _module_name(p)) for p in sorted(SRC.rglob("*.py"))}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycle(edges: dict[str, set[str]]) -> list[str]:
    """One cycle of the directed graph, as a list of nodes, or [] when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_every_part_has_a_layer():
    parts = {_part(m) for m in _graph()} - {""}
    assert parts <= set(RANK), f"give these parts a layer in LAYERS: {sorted(parts - set(RANK))}"


def test_imports_point_down():
    wrong = []
    for module, targets in _graph().items():
        for target in targets:
            src, dst = _part(module), _part(target)
            if src and dst and src != dst and RANK[dst] > RANK[src]:
                wrong.append(f"{module} imports {target} ({src} is below {dst})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle_between_parts():
    edges: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        src = _part(module)
        edges.setdefault(src, set()).update(_part(t) for t in targets if _part(t) not in ("", src))
    assert not _cycle(edges), " -> ".join(_cycle(edges))


def test_no_import_cycle_between_modules():
    graph = _graph()
    edges = {m: {t for t in targets if t in graph and t != m and not m.startswith(t + ".")}
             for m, targets in graph.items()}  # a package's own __init__ is not a cycle
    assert not _cycle(edges), " -> ".join(_cycle(edges))


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The walk finds function-level and `from PACKAGE import MODULE` imports (what a cycle hides in)."""
    pkg = tmp_path / "tgmae" / "data"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("def f():\n    from tgmae.train import loop\n    import tgmae.models.arch\n")
    found = _imports(f, "tgmae.data.x")
    assert {_part(m) for m in found} == {"train", "models"}
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"] and not _cycle({"a": {"b"}})


def test_argparse_only_in_the_command_layer():
    """Every library function is callable without argv: argparse lives in `tgmae.cli` and
    `tgmae.commands` only."""
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        name = _module_name(path)
        if name == "tgmae.cli" or name.startswith("tgmae.commands"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if "argparse" in names:
                bad.append(name)
    assert not bad, f"argparse imported outside the command layer: {sorted(set(bad))}"


def test_rank_and_world_are_read_in_one_place_each():
    """torchrun's RANK / WORLD_SIZE / LOCAL_RANK are read in `tgmae.lifetime` only (`launch_env`,
    `local_rank`: torch-free, so a command stopped while torch imports can still tell its rank),
    the process group's rank in `tgmae.distributed` only (`rank_world`)."""
    for home, needles in (("tgmae.lifetime", ('"LOCAL_RANK"', '"RANK"', '"WORLD_SIZE"')),
                          ("tgmae.distributed", ("get_rank(", "get_world_size("))):
        bad = sorted(_module_name(path) for path in SRC.rglob("*.py")
                     if _module_name(path) != home and any(n in path.read_text() for n in needles))
        assert not bad, f"{needles} read outside {home}: {bad}"
