"""constraints.txt pins every dependency pyproject.toml names, each within its bounds.

The full check (pip resolving ``.[test]`` under the constraints picks exactly the pinned
versions, transitive dependencies included) needs the package index and runs in ``.ci/run``
as ``.ci/check-constraints``; this test catches the common drift offline: a bound changed or a
dependency added in pyproject.toml without regenerating the constraints.
"""

from __future__ import annotations

from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        names += extra
    return [Requirement(name) for name in names]


def test_every_dependency_is_pinned_within_its_bounds() -> None:
    pins = _pins()
    wrong = []
    for req in _requirements():
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            wrong.append(f"{req}: not pinned")
        elif not req.specifier.contains(version, prereleases=True):
            wrong.append(f"{req}: pinned at {version}")
    assert not wrong, "regenerate with `python3 .ci/update-constraints`:\n" + "\n".join(wrong)


def test_the_constraints_do_not_pin_the_project_itself() -> None:
    assert canonicalize_name("prefect-batch") not in _pins()
