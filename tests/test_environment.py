"""The pip path (pyproject.toml) and the conda path (environment.yml) install the same dependencies."""
import re
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pyproject_deps() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def conda_pip_deps() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return {d for d in pip if not d.startswith("-")}


def test_same_set_both_ways():
    assert pyproject_deps() == conda_pip_deps()


def test_every_dependency_is_pinned_exactly():
    loose = [d for d in pyproject_deps() if not re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", d)]
    assert not loose, f"pin these exactly (==): {loose}"


def test_constraints_agree_with_the_pins():
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    norm = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    for dep in pyproject_deps():
        name, ver = dep.split("==")
        assert norm.get(name.lower()) == ver, f"constraints.txt disagrees with pyproject.toml on {name}"


def test_installed_versions_match_the_pins():
    wrong = {d: version(d.split("==")[0]) for d in pyproject_deps()
             if version(d.split("==")[0]).split("+")[0] != d.split("==")[1]}
    assert not wrong, f"installed versions differ from the pins (rerun `make setup`): {wrong}"


def test_python_version():
    assert sys.version_info[:2] == (3, 11), "the course pins Python 3.11 (its corpus fingerprint depends on it)"
