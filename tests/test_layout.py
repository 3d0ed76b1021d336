"""The package's shape: library modules never import Hydra, no import cycle hides behind lazy or
type-checking imports, and entry points import the library, never each other."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gpt_oss"
# `python -m gpt_oss.<command>`: the only modules that compose configs with Hydra.
ENTRY_POINTS = {
    "gpt_oss.bench",
    "gpt_oss.compare",
    "gpt_oss.consolidate",
    "gpt_oss.data.__main__",
    "gpt_oss.evaluate",
    "gpt_oss.export",
    "gpt_oss.generate",
    "gpt_oss.info",
    "gpt_oss.train",
}
HYDRA_SIDE = {"gpt_oss.schema"}  # structured configs and instantiate, shared by entry points
HYDRA = ("hydra", "omegaconf")


def module_names() -> list[str]:
    """Every module of the package, by dotted name (packages by their __init__)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


LIBRARY = [name for name in module_names() if name not in ENTRY_POINTS | HYDRA_SIDE]


def imported_names(module: str) -> set[str]:
    """Every module `module` imports anywhere in its source: at the top, inside functions and
    under TYPE_CHECKING (a lazy import hides a cycle from Python, not from this)."""
    path = PACKAGE.parent.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from gpt_oss.model import moe` imports the module gpt_oss.model.moe
            names |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (packages' __init__ left out: they import
    nothing but the public API of gpt_oss/__init__.py)."""
    modules = set(module_names())
    return {
        module: {name for name in imported_names(module) if name in modules and name != module}
        for module in modules
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that returns to its start, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, then "done"

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_there_is_no_import_cycle_not_even_through_lazy_imports():
    packages = {m for m in module_names() if (PACKAGE.parent / m.replace(".", "/")).is_dir()}
    graph = {m: targets - packages for m, targets in import_graph().items()}
    assert find_cycle(graph) is None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_entry_points_import_the_library_and_never_each_other():
    graph = import_graph()
    for entry in ENTRY_POINTS:
        assert not graph[entry] & ENTRY_POINTS, entry
    for module in LIBRARY:
        assert not graph[module] & (ENTRY_POINTS | HYDRA_SIDE), module


def test_no_library_module_names_hydra_anywhere_in_its_source():
    for module in LIBRARY:
        hydra = {name for name in imported_names(module) if name.split(".")[0] in HYDRA}
        assert not hydra, f"{module} imports {sorted(hydra)}"


# Run in a fresh interpreter: heavy third-party libraries are imported once, then every module
# is imported alone in a forked child, which reports the Hydra modules it ended up with.
ISOLATED_IMPORTS = """
import importlib, json, os, sys
os.environ["MPLBACKEND"] = "Agg"
# Third-party libraries the package uses, none of them Hydra: imported once, for speed.
import matplotlib.pyplot, numpy, safetensors.torch, tiktoken, torch, tqdm.auto, yaml
import torch.distributed, torch.utils.checkpoint
assert not any(name.split(".")[0] in ("hydra", "omegaconf") for name in sys.modules)
results = {}
for module in json.loads(sys.argv[1]):
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        try:
            importlib.import_module(module)
            loaded = sorted(n for n in sys.modules if n.split(".")[0] in ("hydra", "omegaconf"))
            answer = {"hydra": loaded}
        except BaseException as error:  # noqa: BLE001 - reported to the parent, which fails
            answer = {"error": f"{type(error).__name__}: {error}"}
        os.write(write, json.dumps(answer).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        results[module] = json.loads(pipe.read() or '{"error": "the child died"}')
    os.wait()
print(json.dumps(results))
"""


def test_every_module_imports_alone_and_library_modules_leave_hydra_unimported():
    modules = module_names()
    done = subprocess.run(
        [sys.executable, "-c", ISOLATED_IMPORTS, json.dumps(modules)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=PACKAGE.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    assert set(results) == set(modules)
    failed = {module: result["error"] for module, result in results.items() if "error" in result}
    assert not failed
    with_hydra = {
        module: results[module]["hydra"] for module in LIBRARY if results[module]["hydra"]
    }
    assert not with_hydra
    # the check can fail: an entry point does load Hydra
    assert results["gpt_oss.train"]["hydra"]
