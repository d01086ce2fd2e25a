"""The layers point one way: every package imports only the layers docs/architecture.md puts below it
(every import, function-local ones too), the graph has no cycle, and policy/, scheduler/ and kv/ stay
pure (no torch, clocks or file I/O)."""
import ast
from pathlib import Path

import pytest

import hybridllm

ROOT = Path(hybridllm.__file__).parent
# Leaf modules of the root package that any layer may import.
SHARED = {"config", "dtypes", "utils", "sampling_params", "ov_common", "cli_args", "__init__"}


def _unit(module: str) -> str:
    """hybridllm.x.y -> the package (or shared module) it belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "hybridllm"


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of the hybridllm modules `path` imports, anywhere in the file."""
    pkg = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("hybridllm"):
                out.add(name)
                out.update(f"{name}.{a.name}" for a in node.names)     # `from . import x` names a module
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("hybridllm"))
    return out


def _graph() -> dict[str, set[str]]:
    units = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    units |= {p.stem for p in ROOT.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(("hybridllm",) + rel.parts)
        src = rel.parts[0]
        for name in _imports(path, module):
            dst = name.split(".")[1] if name.count(".") >= 1 else "hybridllm"
            if dst in units and dst != src and dst not in SHARED and src not in SHARED:
                graph.setdefault(src, set()).add(dst)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in the graph as a path that ends where it starts, or None."""
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in seen:
            return None
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            found = visit(nxt)
            if found:
                return found
        stack.pop()
        seen.add(node)
        return None

    for node in sorted(graph):
        found = visit(node)
        if found:
            return found
    return None


# The documented direction (docs/architecture.md, "Layers"): what each unit may import.
ALLOWED = {
    "serving": {"engine", "models"},
    "cli": {"llm", "serving", "profiling", "runtime", "models", "converters"},
    "llm": {"engine"},
    "engine": {"runtime", "scheduler", "profiling", "policy", "models", "kv"},
    "profiling": {"runtime", "attention", "scheduler", "kv", "policy", "models", "kernels"},
    "runtime": {"scheduler", "attention", "kv", "models", "kernels", "policy"},
    "scheduler": {"kv", "policy"},
    "attention": {"kv", "kernels"},
    "models": {"kernels", "converters"},
    "policy": {"kv", "models"},          # kv.tier and models.config only (checked below)
    "kernels": set(),
    "converters": set(),
    "kv": set(),
}


def test_every_package_imports_only_the_layers_below_it():
    graph = _graph()
    units = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert units - {"__pycache__"} <= set(ALLOWED), f"a package the map does not place: {units - set(ALLOWED)}"
    for unit, deps in graph.items():
        assert deps <= ALLOWED[unit], f"{unit} imports {sorted(deps - ALLOWED[unit])}, against the documented direction"


def test_the_direction_check_sees_an_upward_edge():
    graph = {k: set(v) for k, v in _graph().items()}
    graph["scheduler"].add("runtime")
    bad = {u for u, d in graph.items() if not d <= ALLOWED[u]}
    assert bad == {"scheduler"}


def _third_party(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
    return mods


@pytest.mark.parametrize("unit", ["scheduler", "kv"])
def test_bookkeeping_layers_are_pure(unit):
    """scheduler/ and kv/ are dataclasses in, dataclasses out: no torch, numpy, OpenVINO, clocks or files."""
    for path in (ROOT / unit).rglob("*.py"):
        mods = _third_party(path)
        assert not mods & {"torch", "numpy", "openvino", "time", "os", "json", "pathlib", "threading"}, (path.name, mods)
        calls = {n.func.id for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "open" not in calls, path.name


def test_no_cycle_between_packages():
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


def test_the_checks_see_real_edges_and_real_cycles():
    graph = _graph()
    # Guard against a graph builder that sees nothing: these edges exist.
    assert "runtime" in graph["engine"] and "scheduler" in graph["runtime"] and "policy" in graph["scheduler"]
    # And the search finds a cycle when one is there (runtime importing engine back).
    looped = {k: set(v) for k, v in graph.items()}
    looped["runtime"].add("engine")
    cycle = find_cycle(looped)
    assert cycle and cycle[0] == cycle[-1] and {"engine", "runtime"} <= set(cycle), cycle


def test_policy_is_pure():
    allowed = {"policy", "dtypes", "models", "kv"}      # models: ModelConfig only; kv: Tier only (checked below)
    for path in (ROOT / "policy").rglob("*.py"):
        module = "hybridllm.policy." + path.stem
        for name in _imports(path, module):
            assert name.split(".")[1] in allowed, f"{path.name} imports {name}"
            if name.startswith("hybridllm.models"):
                assert name in ("hybridllm.models.config", "hybridllm.models.config.ModelConfig"), name
            if name.startswith("hybridllm.kv"):
                assert name in ("hybridllm.kv.tier", "hybridllm.kv.tier.Tier"), name
        tree = ast.parse(path.read_text())
        mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not mods & {"torch", "time", "os", "json", "pathlib", "tempfile", "openvino"}, (path.name, mods)
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "open" not in calls, path.name
