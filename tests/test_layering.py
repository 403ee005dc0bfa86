"""The package layering stays one-directional: read every project import and check it.

The agreed direction (README, "Layout"), lowest layer first; a module may import
modules of its own layer or of lower layers only:

0. leaf: errors, one-hot, the atomic file writer, the no-autocast helper, the spatial transformer;
1. networks and losses (``networks/``) and the metrics;
2. data loading (``dataloaders/``);
3. training engine, stages and tools (the rest of ``utils/``);
4. the scripts at the top level.

Also: no module-level import cycle, no project import inside a function, and nothing
under ``networks/`` reads image files, draws progress bars or writes TensorBoard logs.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("networks", "dataloaders", "utils")
LAYERS = {  # module-name prefix -> layer; the longest matching prefix wins
    "utils.errors": 0, "utils.onehot": 0, "utils.files": 0, "utils.precision": 0,
    "networks.spatial_transformer": 0,
    "networks": 1, "utils.metrics": 1,
    "dataloaders": 2,
    "utils": 3,
}
SCRIPT_LAYER = 4
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


def layer(module: str) -> int:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else SCRIPT_LAYER


def test_every_project_module_is_seen():
    assert {"networks.spatial_transformer", "dataloaders.dataset", "utils.training.engine"} <= set(MODULES)
    assert layer("utils.onehot") == 0 and layer("networks.rsgm") == 1 and layer("dataloaders.sampling") == 2
    assert layer("utils.training.engine") == 3 and layer("5fold_Train_Reg") == SCRIPT_LAYER


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
