"""Data flows one way between the packages: no import cycle among rewardiff modules, and the
rewards layer never reaches up into algorithms or judges (issue 14).

Every `import` / `from ... import` node counts, including those inside functions: a deferred
import still couples the modules and a cycle through it only fails later, at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "src" / "rewardiff"
FORBIDDEN_FROM_REWARDS = ("rewardiff.algorithms", "rewardiff.judges")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """rewardiff modules `module` imports (`from pkg import submodule` names the submodule)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            target = node.module if node.level == 0 else _resolve_relative(module, path.name == "__init__.py", node.level, node.module)
            if target in known:
                out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
    out.discard(module)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative DFS with white/grey/black colours)."""
    colour = dict.fromkeys(graph, 0)
    for root in sorted(graph):
        if colour[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
            elif colour[child] == 1:
                path = [n for n, _ in stack]
                return path[path.index(child):] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_graph_sees_function_level_and_submodule_imports():
    graph = import_graph()
    assert "rewardiff.errors" in graph["rewardiff.rewards.registry"]
    assert "rewardiff.models.lora" in graph["rewardiff.algorithms.sft"]  # imported inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_rewards_do_not_import_algorithms_or_judges():
    bad = sorted(f"{name} -> {dep}" for name, deps in import_graph().items() if name.startswith("rewardiff.rewards")
                 for dep in deps if dep.startswith(FORBIDDEN_FROM_REWARDS))
    assert not bad, "rewards must not import algorithms or judges:\n" + "\n".join(bad)


# --- dependency bounds ------------------------------------------------------------------------

PYPROJECT = PACKAGE_ROOT.parent.parent / "pyproject.toml"
FEATURE_FLOORS = {
    # diffusers 0.34 (PR #11324): save_lora_weights(unet_/text_encoder_lora_adapter_metadata=...), which
    # save_lora uses so rank and alpha travel with the file; 0.32 (PR #9878): gradient checkpointing
    # also in eval mode (ReFL's frozen-mode U-Net)
    "diffusers": "0.34",
}
"""The oldest release of each package that has every feature rewardiff uses (issue 14)."""


def _requirements() -> dict[str, Requirement]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import pytest

        tomllib = pytest.importorskip("tomli")
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return {r.name.lower(): r for r in map(Requirement, deps)}


def _lower_bound(req: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(bounds) if bounds else None


def test_installed_packages_satisfy_the_pyproject_bounds():
    from importlib.metadata import version

    for name, req in _requirements().items():
        installed = version(name)
        assert req.specifier.contains(installed, prereleases=True), f"{name} {installed} does not satisfy pyproject's {req}"


def test_lower_bounds_are_at_least_the_feature_floors():
    reqs = _requirements()
    for name, floor in FEATURE_FLOORS.items():
        bound = _lower_bound(reqs[name])
        assert bound is not None and bound >= Version(floor), f"pyproject allows {reqs[name]}, but the code needs {name}>={floor}"


def test_installed_diffusers_has_the_features_behind_its_floor():
    """The features the floor stands for, probed on the installed release (a check that the
    floor's reasons are still the code's: the metadata keywords, eval-mode checkpointing)."""
    import inspect

    from diffusers import StableDiffusionPipeline
    from diffusers.models.unets import unet_2d_blocks

    params = inspect.signature(StableDiffusionPipeline.save_lora_weights).parameters
    assert {"unet_lora_adapter_metadata", "text_encoder_lora_adapter_metadata"} <= set(params)
    assert "self.training and self.gradient_checkpointing" not in inspect.getsource(unet_2d_blocks)
