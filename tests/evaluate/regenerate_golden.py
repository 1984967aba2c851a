"""Rewrite the golden tables (tests/evaluate/golden/) from the fixture results, after a reviewed
change of the tables; `git diff tests/evaluate/golden` then shows what changed:

    python -m tests.evaluate.regenerate_golden
"""

import os
import shutil
import tempfile
from pathlib import Path

from tests.evaluate.conftest import FIXED_MTIME, FIXTURES, GOLDEN, demo_config, report_files

from phi3v.reporting.tables import write_tables


def regenerate() -> list[Path]:
    with tempfile.TemporaryDirectory() as scratch:
        results = Path(scratch) / "results"
        shutil.copytree(FIXTURES / "results", results)
        for path in results.rglob("*"):
            os.utime(path, (FIXED_MTIME, FIXED_MTIME))  # the footer's date, as the test fixes it
        config = demo_config()
        return write_tables(config, report_files(results, config), GOLDEN, GOLDEN / "README.md")


if __name__ == "__main__":
    for path in regenerate():
        print(path)
