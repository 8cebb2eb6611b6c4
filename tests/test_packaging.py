"""What a wheel carries: every file the packages read at run time (SQL, the dashboard's
static files) is matched by pyproject.toml's package-data, so a non-editable install
works as the editable one the tests run on."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_SUFFIXES = {".sql", ".html", ".js", ".css", ".typed"}


def test_every_data_file_of_the_packages_is_in_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data: dict[str, list[str]] = config["tool"]["setuptools"]["package-data"]
    missing = []
    for package, patterns in package_data.items():
        base = ROOT / package
        for path in base.rglob("*"):
            if path.suffix not in DATA_SUFFIXES or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(base)
            if not any(relative.match(pattern) for pattern in patterns):
                missing.append(f"{package}/{relative}")
    assert set(package_data) == {"vpsweb_tasks", "vpsweb_tasks_http"}
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
