"""requirements.lock pins what a fresh clone installs: it agrees with pyproject.toml's ranges, pins every package
exactly, and is what this environment has (so a new release of a dependency changes nothing until `make lock`)."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
SMOKE_LOCK = ROOT / "requirements-smoke.lock"
SMOKE_INPUT = ROOT / "requirements-smoke.in"
# The platform the lock is made for (Makefile LOCK_FLAGS): CPython 3.11 on x86-64 Linux.
LOCK_PLATFORM = {
    **default_environment(),
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def read_pins(path: Path) -> dict[str, Version]:
    """name -> version of a lock file; anything but `name==version` (a range, a URL, an editable) is refused."""
    pins = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert requirement.url is None and len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"{path.name}:{number}: {raw!r} is not an exact pin; run `make lock`"
        )
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{path.name}:{number}: {name} pinned twice"
        pins[name] = Version(specifiers[0].version)
    return pins


def project_requirements(*extras: str) -> list[Requirement]:
    """pyproject.toml's dependencies plus the named extras, for the lock's platform."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    requirements = [Requirement(line) for line in lines]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({**LOCK_PLATFORM, "extra": ""})]


def locked_extras() -> list[str]:
    """Every extra of pyproject.toml: the lock covers them all (the Makefile's `lock` compiles each)."""
    return list(
        tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    )


def test_every_project_requirement_is_locked_inside_its_range():
    pins = read_pins(LOCK)
    problems = []
    for requirement in project_requirements(*locked_extras()):
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement} is in pyproject.toml but not in requirements.lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{requirement} in pyproject.toml, but requirements.lock pins {name}=={pins[name]}")
    assert not problems, "pyproject.toml and the lock disagree; run `make lock`:\n" + "\n".join(problems)


def test_the_lock_pins_torch_without_a_build_tag():
    """One line serves the CPU build (here, CI) and the CUDA build of a GPU box: `==2.13.0` accepts both."""
    torch = read_pins(LOCK)["torch"]
    assert torch.local is None
    assert Version(metadata.version("torch")).base_version == torch.base_version


def test_this_environment_is_the_lock():
    """What `make install` did: every locked package at its locked version (a drift means an install from a range)."""
    drift = []
    for name, version in read_pins(LOCK).items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            drift.append(f"{name}=={version} is locked but not installed")
            continue
        if Version(installed.base_version) != Version(version.base_version) or (
            version.local is not None and installed != version
        ):
            drift.append(f"{name}: locked {version}, installed {installed}")
    assert not drift, "this environment is not the lock; `rm -rf .venv && make install`:\n" + "\n".join(drift)


def test_the_smoke_lock_pins_exactly_its_inputs():
    inputs = {
        canonicalize_name(Requirement(line).name): Requirement(line)
        for line in (raw.split("#", 1)[0].strip() for raw in SMOKE_INPUT.read_text().splitlines())
        if line
    }
    pins = read_pins(SMOKE_LOCK)
    assert set(pins) == set(inputs), "requirements-smoke.lock and requirements-smoke.in disagree; run `make lock`"
    for name, requirement in inputs.items():
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement}"


@pytest.mark.parametrize("line, problem", [("numpy>=1.26", "not an exact pin"), ("numpy==2.0\nnumpy==2.1", "twice")])
def test_a_lock_with_a_range_or_a_double_pin_is_refused(tmp_path, line, problem):
    path = tmp_path / "bad.lock"
    path.write_text(line + "\n")
    with pytest.raises(AssertionError, match=problem):
        read_pins(path)
