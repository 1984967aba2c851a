"""The locked environment: `requirements.lock` (pip-compile's output, exact versions of everything
`make install` installs) and the conda environments of the rule groups pinned from it.

`make lock` compiles the lock from pyproject.toml and then runs `python -m phi3v.lockfile
--write-envs`, which rewrites each `envs/<group>.yaml`: the group's own dependencies (the lines
above `PINNED_MARKER`, kept as written) and everything they need, each at the lock's exact version,
so a Snakemake `--use-conda` run installs the same versions as `make install`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK_FILE = REPO / "requirements.lock"
ENVS_DIR = REPO / "envs"
PINNED_MARKER = "# pinned by `make lock`: what the packages above need"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")
_VIA = re.compile(r"^\s+#\s+(?:via\s+)?([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\(.*\))?$")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK_FILE) -> dict[str, dict]:
    """name -> {"version", "needed_by": set of names (pip-compile's `# via` lines)}."""
    packages: dict[str, dict] = {}
    current = None
    for line in path.read_text().splitlines():
        if match := _PIN.match(line):
            current = normalize(match.group(1))
            packages[current] = {"name": match.group(1), "version": match.group(2), "needed_by": set()}
        elif current and (via := _VIA.match(line)) and via.group(1) != "via":
            packages[current]["needed_by"].add(normalize(via.group(1)))
    return packages


def lock_sha256(path: Path = LOCK_FILE) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def closure(names: set[str], lock: dict[str, dict]) -> set[str]:
    """`names` and every locked package they need, directly or not."""
    found = {normalize(name) for name in names}
    grew = True
    while grew:
        grew = False
        for name, entry in lock.items():
            if name not in found and entry["needed_by"] & found:
                found.add(name)
                grew = True
    return found


def installed_differences(lock: dict[str, dict] | None = None) -> dict[str, dict]:
    """Locked packages whose installed version differs (None: not installed); provenance records them."""
    lock = read_lock() if lock is None else lock
    differences = {}
    for name, entry in lock.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        # A local build label (torch's `+cpu`, `+cu124`) is the same release.
        if installed is None or installed.split("+")[0] != entry["version"].split("+")[0]:
            differences[name] = {"locked": entry["version"], "installed": installed}
    return differences


def provenance() -> dict:
    """The lock's hash and what the running environment installed otherwise."""
    if not LOCK_FILE.is_file():
        return {"file": None, "sha256": None, "differs": None}
    return {"file": LOCK_FILE.name, "sha256": lock_sha256(), "differs": installed_differences()}


def env_direct_requirements(text: str) -> list[str]:
    """The pip lines of an env file above `PINNED_MARKER`: the group's own dependencies."""
    lines, in_pip = [], False
    for line in text.splitlines():
        if line.strip() == "- pip:":
            in_pip = True
        elif in_pip and PINNED_MARKER in line:
            break
        elif in_pip and line.strip().startswith("- "):
            lines.append(line.strip()[2:].strip())
    return lines


def pinned_env(text: str, lock: dict[str, dict]) -> str:
    """The env file with its own dependencies and all they need pinned to the lock's versions."""
    direct = env_direct_requirements(text)
    direct_names = [normalize(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in direct]
    missing = [name for name in direct_names if name not in lock]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not in {LOCK_FILE.name}: add it to pyproject.toml and run `make lock`")
    head = text[: text.index("  - pip:")] + "  - pip:\n"
    own = [f"      - {lock[name]['name']}=={lock[name]['version']}" for name in direct_names]
    needed = sorted(closure(set(direct_names), lock) - set(direct_names))
    pinned = [f"      - {lock[name]['name']}=={lock[name]['version']}" for name in needed]
    return head + "\n".join([*own, f"      {PINNED_MARKER}", *pinned]) + "\n"


def write_envs(lock_path: Path = LOCK_FILE, envs_dir: Path = ENVS_DIR) -> list[Path]:
    lock = read_lock(lock_path)
    written = []
    for env_file in sorted(envs_dir.glob("*.yaml")):
        env_file.write_text(pinned_env(env_file.read_text(), lock))
        written.append(env_file)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pin envs/*.yaml to requirements.lock (run by `make lock`).")
    parser.add_argument("--write-envs", action="store_true", help="rewrite envs/*.yaml from the lock")
    args = parser.parse_args(argv)
    if args.write_envs:
        for path in write_envs():
            print(f"pinned {path.relative_to(REPO)}")
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
