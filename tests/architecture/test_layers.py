"""The package's layers (docs/architecture.md): no module imports from a layer above its own, and no
module imports itself through others (a circle), function-level imports included."""

import ast
import graphlib
from pathlib import Path

import phi3v

PACKAGE = Path(phi3v.__file__).resolve().parent

# Bottom to top; a module may import its own layer and those below. The package root is left out:
# Python runs it before any submodule anyway (it pins numerics and registers the Auto classes).
LAYERS = [
    ("ground", ["errors", "files", "hd_geometry", "image_files", "layout", "launch", "lockfile", "model_files", "model_sizes", "numerics",
                "provenance"]),
    ("model", ["configuration_phi3v", "modeling_phi3v", "image_processing_phi3v", "processing_phi3v"]),
    ("data", ["data"]),
    ("training", ["training"]),
    ("evaluation", ["evaluation"]),
    ("reporting", ["reporting"]),
    ("workflow", ["workflow"]),
    ("applications", ["cli", "recipe", "hub_cache", "testing"]),
]


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "phi3v" or len(parts) == 1:
        return None
    for level, (_, heads) in enumerate(LAYERS):
        if parts[1] in heads:
            return level
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to docs/architecture.md")


def module_name(path: Path) -> str:
    parts = ["phi3v", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """The modules a file imports, at any depth (imports inside functions too), relative ones
    resolved: `from a import b` names the module `a.b` where there is one, else `a`."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found |= {f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target
                      for alias in node.names}
    return found


def import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the modules of the package it imports."""
    return {module: {target for target in imported_modules(path) if target in MODULES and target != module}
            for module, path in MODULES.items()}


def import_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports (`a, b, ..., a`: each imports the next), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return list(reversed(error.args[1]))  # graphlib lists it against the edges
    return None


def test_every_module_imports_only_its_layer_and_below():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        own = layer_of(module)
        for target in imported_modules(path):
            other = layer_of(target) if target.startswith("phi3v.") else None
            if own is not None and other is not None and other > own:
                violations.append(f"{module} ({LAYERS[own][0]}) imports {target} ({LAYERS[other][0]})")
    assert not violations, "\n".join(violations)


def test_the_check_sees_an_upward_import(tmp_path):
    # The same checker, on a module of the data layer that imports the workflow: it must be caught.
    bad = PACKAGE / "data" / "records.py"
    imports = imported_modules(bad) | {"phi3v.workflow.settings"}
    assert any(layer_of(t) > layer_of("phi3v.data.records") for t in imports if t.startswith("phi3v."))


def test_no_module_imports_itself_through_others():
    circle = import_circle(import_graph())
    assert circle is None, (f"import circle: {' -> '.join(circle)} — move what both need into a module "
                            "below them both")


def test_the_check_sees_a_circle_made_by_a_function_level_import():
    # phi3v.training.run_config imports phi3v.errors; an import back, inside a function, closes a circle
    graph = import_graph()
    assert "phi3v.errors" in graph["phi3v.training.run_config"]
    graph["phi3v.errors"] = graph["phi3v.errors"] | {"phi3v.training.run_config"}
    circle = import_circle(graph)
    assert circle is not None and {"phi3v.errors", "phi3v.training.run_config"} <= set(circle)
