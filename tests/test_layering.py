"""The package layering stays one-directional: read every project import and check it.

Layers by package, lowest first; a module may import modules of its own layer or of
lower layers only (README, "Layout"):

0. the small leaves: the modules directly in ``utils/`` that are no command (errors,
   files, cli, onehot, precision);
1. ``networks`` (networks, losses, the spatial transformer, RSGM, RNSF);
2. ``dataloaders`` (dataset folders, fold files and splits, grades, pre-alignment,
   importers, training and evaluation samples);
3. ``utils.training`` (the engine) and ``utils.clinical`` (measures from masks);
4. ``utils.evaluation`` (metrics, loops, comparisons, prediction, pictures) and
   ``utils.synthetic`` (the demo data);
5. ``utils.stages`` (the training methods);
6. the commands: the scripts at the top level and the ``python -m utils.<command>``
   modules (a module directly in ``utils/`` with an ``if __name__ == "__main__"`` block).

A new package under ``utils/`` fails :func:`test_every_package_has_a_layer` until it is
given one here. Also: no module-level import cycle, no project import inside a
function, and nothing under ``networks/`` reads image files, draws progress bars or
writes TensorBoard logs.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_LAYERS = {"networks": 1, "dataloaders": 2, "utils.training": 3, "utils.clinical": 3,
                  "utils.evaluation": 4, "utils.synthetic": 4, "utils.stages": 5}
LEAF_LAYER, COMMAND_LAYER = 0, 6
FORBIDDEN_IN_NETWORKS = {"tqdm", "tensorboard", "torch.utils.tensorboard", "cv2", "PIL", "imageio", "skimage.io"}


def project_modules() -> dict[str, ast.Module]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "benchmarks", "docs") or any(p.startswith(".") for p in rel.parts):
            continue
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        modules[name] = ast.parse(path.read_text(), filename=str(path))
    return modules


MODULES = project_modules()


def resolve(target: str) -> str | None:
    """The project module an imported name belongs to (None for external modules)."""
    while target:
        if target in MODULES:
            return target
        target = target.rpartition(".")[0]
    return None


def imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """``(imported name, inside a function)`` for every absolute import of ``tree``."""
    inner = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in inner) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(f"{node.module}.{alias.name}", id(node) in inner) for alias in node.names]
    return found


def project_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, tree in MODULES.items():
        for target, _ in imports(tree):
            module = resolve(target)
            if module is not None and module != name:
                edges[name].add(module)
    return edges


def is_command(module: str) -> bool:
    """A top-level script, or a ``python -m utils.<command>`` module."""
    parts = module.split(".")
    if len(parts) == 1:
        return module not in {"networks", "dataloaders", "utils"}
    return len(parts) == 2 and parts[0] == "utils" and any(
        isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in MODULES[module].body)


def layer(module: str) -> int:
    if is_command(module):
        return COMMAND_LAYER
    parts = module.split(".")
    for depth in (2, 1):
        if ".".join(parts[:depth]) in PACKAGE_LAYERS:
            return PACKAGE_LAYERS[".".join(parts[:depth])]
    if parts[0] == "utils" and len(parts) <= 2:
        return LEAF_LAYER
    raise KeyError(f"{module} is in no layer: give its package one in PACKAGE_LAYERS")


def test_every_package_has_a_layer():
    for module in MODULES:
        layer(module)
    packages = {p.name for p in (ROOT / "utils").iterdir() if (p / "__init__.py").is_file()}
    assert {f"utils.{name}" for name in packages} <= set(PACKAGE_LAYERS)


def test_layers_are_read_by_package():
    assert {"networks.spatial_transformer", "dataloaders.dataset", "utils.training.engine"} <= set(MODULES)
    assert layer("utils.onehot") == LEAF_LAYER and layer("networks.rsgm") == 1 and layer("dataloaders.sampling") == 2
    assert layer("utils.training.engine") == 3 and layer("utils.stages.ss_mgs") == 5
    assert layer("utils.make_folds") == COMMAND_LAYER and layer("5fold_Train_Reg") == COMMAND_LAYER
    assert layer("utils.errors") == LEAF_LAYER


def test_no_import_against_the_direction():
    wrong = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
             for a, targets in project_edges().items() for b in sorted(targets) if layer(b) > layer(a)]
    assert not wrong, "\n".join(wrong)


def test_no_project_import_inside_a_function():
    hidden = [f"{name} imports {target} inside a function" for name, tree in MODULES.items()
              for target, inside in imports(tree) if inside and resolve(target) is not None]
    assert not hidden, "\n".join(hidden)


def test_no_module_cycle():
    edges = project_edges()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [module, target]))
            elif target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("networks")))
def test_networks_read_no_files_and_draw_no_progress(module):
    external = {target for target, _ in imports(MODULES[module]) if resolve(target) is None}
    bad = {t for t in external if any(t == f or t.startswith(f + ".") for f in FORBIDDEN_IN_NETWORKS)}
    assert not bad, f"{module} imports {sorted(bad)}"
    source = ast.unparse(MODULES[module])
    assert "open(" not in source and "torch.load" not in source and "imread" not in source
