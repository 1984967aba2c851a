"""The locked environment: requirements.lock agrees with pyproject.toml, and the conda environments
of the rule groups list every dependency their code imports, at the lock's exact versions."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from phi3v import lockfile

REPO = Path(__file__).resolve().parents[2]

# rule group -> the scripts its rules run
GROUPS = {
    "data": ["raw_dataset", "convert", "validate", "pretrain_corpus", "download_model"],
    "train": ["build_demo_model_config", "build_demo_model", "train", "benchmark_speed"],
    "evaluate": ["evaluate"],
    "tables": ["tables", "figures"],
}
# Modules the training entry point starts in child processes (imported by name, not by `import`).
STARTED_MODULES = {"train": ["phi3v.launch", "phi3v.training.train"]}


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].strip().lower().replace("_", "-")


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return {requirement_name(spec): spec for spec in specs}


def env_requirements(group: str) -> dict[str, str]:
    env = yaml.safe_load((REPO / "envs" / f"{group}.yaml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict) and "pip" in item)
    return {requirement_name(spec): spec for spec in pip or []}


def module_file(module: str) -> Path | None:
    parts = module.split(".")
    for candidate in (REPO.joinpath(*parts).with_suffix(".py"), REPO.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a file imports (at any depth: lazy imports inside functions count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def third_party_imports(group: str) -> set[str]:
    """Top-level third-party modules reachable from the group's scripts through the package."""
    todo = [REPO / "scripts" / f"{name}.py" for name in GROUPS[group]] + [REPO / "scripts" / "common.py"]
    todo += [module_file(m) for m in STARTED_MODULES.get(group, []) if module_file(m)]
    seen, found = set(), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top == "phi3v":  # follow the package, each parent package's __init__ included
                parts = module.split(".")
                todo += [f for i in range(1, len(parts) + 1) if (f := module_file(".".join(parts[:i])))]
            elif top == "common":
                todo.append(REPO / "scripts" / "common.py")
            elif top not in sys.stdlib_module_names and top not in ("snakemake", "__future__"):
                found.add(top)
    return found


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_env_lists_every_imported_dependency(group):
    requirements = env_requirements(group)
    distributions = packages_distributions()
    missing = []
    for module in sorted(third_party_imports(group)):
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not names & set(requirements):
            missing.append(f"{module} (distribution {', '.join(sorted(names))})")
    assert not missing, f"envs/{group}.yaml lacks: {', '.join(missing)}"


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_env_pins_are_the_locked_versions(group):
    text = (REPO / "envs" / f"{group}.yaml").read_text()
    lock = lockfile.read_lock()
    project = pyproject_requirements()
    for spec in lockfile.env_direct_requirements(text):
        assert requirement_name(spec) in project, f"envs/{group}.yaml: {spec} is not a dependency in pyproject.toml"
    assert text == lockfile.pinned_env(text, lock), f"envs/{group}.yaml is not pinned to {lockfile.LOCK_FILE.name}: run `make lock`"


def test_lock_holds_every_dependency_of_pyproject_at_a_version_it_allows():
    """`make install` installs pyproject's dependencies and extras (flash-attn aside) from the lock."""
    lock = lockfile.read_lock()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra, extra_specs in project["optional-dependencies"].items():
        specs += [] if extra == "flash" else extra_specs
    problems = []
    for spec in map(Requirement, specs):
        entry = lock.get(lockfile.normalize(spec.name))
        if entry is None:
            problems.append(f"{spec.name} is not in the lock")
        elif not spec.specifier.contains(entry["version"], prereleases=True):
            problems.append(f"{spec} but the lock has {entry['version']}")
    # pip-compile marks what the project itself asked for: nothing there that pyproject dropped.
    asked = {name for name, entry in lock.items() if "phi3v" in entry["needed_by"]}
    dropped = asked - {lockfile.normalize(Requirement(spec).name) for spec in specs}
    problems += [f"{name} is locked for pyproject.toml, which no longer asks for it" for name in sorted(dropped)]
    assert not problems, "requirements.lock disagrees with pyproject.toml (run `make lock`): " + "; ".join(problems)


def test_lock_closure_follows_what_each_package_needs(tmp_path):
    lock_file = tmp_path / "requirements.lock"
    lock_file.write_text("a==1.0\n    # via phi3v (pyproject.toml)\nb==2.0\n    # via\n    #   a\n    #   c\n"
                         "c==3.0\n    # via d\nd==4.0+cpu\n    # via phi3v (pyproject.toml)\n")
    lock = lockfile.read_lock(lock_file)
    assert lock["b"]["needed_by"] == {"a", "c"} and lock["d"]["version"] == "4.0+cpu"
    assert lockfile.closure({"a"}, lock) == {"a", "b"}
    assert lockfile.closure({"D"}, lock) == {"b", "c", "d"}
    env = "# x\ndependencies:\n  - pip\n  - pip:\n      - a>=0.5\n"
    pinned = lockfile.pinned_env(env, lock)
    assert pinned.endswith(f"      - a==1.0\n      {lockfile.PINNED_MARKER}\n      - b==2.0\n")
    assert lockfile.pinned_env(pinned, lock) == pinned  # idempotent: the lines above the marker stay the group's own


def test_installed_environment_is_the_lock():
    """The suite runs in what `make install` made; provenance records any difference."""
    assert lockfile.installed_differences() == {}


def test_every_script_belongs_to_a_group():
    scripts = {p.stem for p in (REPO / "scripts").glob("*.py")} - {"common"}
    assert scripts == {name for names in GROUPS.values() for name in names}
