"""The layers of docs/ARCHITECTURE.md hold: no module imports from a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first. A module may import from its own layer and the layers below it.
LAYERS = [
    ("models", ["models"]),
    ("checkpoint", ["utils/__init__.py", "utils/machine.py", "utils/checkpoint"]),
    ("inference pieces", ["utils/inference"]),
    ("settings", ["utils/config.py"]),
    ("data", ["utils/data"]),
    ("metrics", ["utils/evaluation"]),
    ("training", ["utils/training", "train.py", "search.py", "audit.py"]),
    ("inference", ["inferer.py"]),
    ("uses of inference", ["eval.py", "predict.py", "predict_ray.py", "suggest.py", "export.py", "utils/export",
                           "serving", "app.py", "gunicorn.conf.py"]),
    ("command line", ["main.py"]),
]
PROJECT_PACKAGES = ("models", "utils", "serving")
TOP_MODULES = ("train", "search", "audit", "inferer", "eval", "predict", "predict_ray", "suggest", "export", "app",
               "main")


def layer_of(relative: str) -> int | None:
    for index, (_, members) in enumerate(LAYERS):
        if any(relative == m or relative.startswith(m.rstrip("/") + "/") for m in members):
            return index
    return None


def module_path(name: str) -> str | None:
    """The file (or package folder) of a project module name, relative to the root."""
    parts = name.split(".")
    if parts[0] not in PROJECT_PACKAGES + TOP_MODULES:
        return None
    for end in range(len(parts), 0, -1):
        candidate = "/".join(parts[:end])
        if (ROOT / f"{candidate}.py").is_file():
            return f"{candidate}.py"
        if (ROOT / candidate).is_dir():
            return candidate
    return None


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


SOURCES = sorted(p for p in ROOT.rglob("*.py") if layer_of(p.relative_to(ROOT).as_posix()) is not None)


def test_every_source_file_has_a_layer():
    unplaced = [p.relative_to(ROOT).as_posix() for p in ROOT.glob("**/*.py")
                if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
                and p.relative_to(ROOT).parts[0] not in ("tests", "bench", "docker")
                and layer_of(p.relative_to(ROOT).as_posix()) is None]
    assert unplaced == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_import_from_a_layer_above(path):
    own = layer_of(path.relative_to(ROOT).as_posix())
    assert own is not None
    upward = []
    for name in imported_modules(path):
        target = module_path(name)
        target_layer = layer_of(target) if target else None
        if target_layer is not None and target_layer > own:
            upward.append(f"{name} ({LAYERS[target_layer][0]})")
    assert upward == [], f"{path.name} ({LAYERS[own][0]}) imports from above: {upward}"


def test_models_import_nothing_else_of_the_project():
    outside = [f"{path.relative_to(ROOT)}: {name}" for path in sorted((ROOT / "models").glob("*.py"))
               for name in imported_modules(path)
               if (module_path(name) or "models").split("/")[0] != "models"]
    assert outside == []


# What the serving images hold of utils/: the layers below settings, as whole folders.
SERVED_UTILS = {m for _, members in LAYERS[1:3] for m in members}


def test_the_serving_images_copy_whole_folders_of_the_layers_below_settings():
    for dockerfile in ("Dockerfile", "Dockerfile.onnx"):
        lines = (ROOT / dockerfile).read_text().splitlines()
        words = [w for line in lines if line.startswith("COPY ") for w in line.split()]
        copied = {w.rstrip("/") for w in words if w.startswith("utils/")}
        assert copied == SERVED_UTILS, dockerfile


PROJECT_SOURCES = sorted(p for p in ROOT.rglob("*.py") if not any(part.startswith(".")
                                                                   for part in p.relative_to(ROOT).parts))
MAX_INFERER_LINES = 150


def test_model_inferer_is_a_lean_class():
    """ModelInferer loads, scores, predicts and explains; costs, answers, the blend and input checks live in
    modules of their own, so its class (the `class` line to its end) stays under 150 lines."""
    tree = ast.parse((ROOT / "inferer.py").read_text())
    (inferer,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "ModelInferer"]
    assert inferer.end_lineno is not None
    assert inferer.end_lineno - inferer.lineno + 1 < MAX_INFERER_LINES


def names_used(path: Path) -> set[str]:
    """Every name a module imports, reads or reaches as an attribute."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {alias.name.rsplit(".", 1)[-1] for alias in node.names}
    return names


def test_the_backend_is_chosen_in_one_place():
    """`backend_for` is the one way to the choice: the inferer, predict_ray's driver and gunicorn's master ask it
    with the inferer's arguments, and no module outside utils/inference/backends.py calls `choose_backend`."""
    backends = ROOT / "utils" / "inference" / "backends.py"
    around = [p.relative_to(ROOT).as_posix() for p in PROJECT_SOURCES
              if p != backends and "choose_backend" in names_used(p)]
    assert around == []
    for module in ("inferer.py", "predict_ray.py", "gunicorn.conf.py"):
        assert "backend_for" in names_used(ROOT / module), module


def test_no_function_of_the_product_is_over_50_lines():
    """Functions fit on a screen (bench/ and tests/ aside)."""
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
            for path in SOURCES for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and (node.end_lineno or node.lineno) - node.lineno + 1 > 50]
    assert long == []
