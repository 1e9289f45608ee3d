"""launch.sh's choice of interpreter, run on a copy of the script in a throw-away directory (no torch installed).

`./launch.sh env` prints the interpreter the commands would use and why, making `.venv/` when that is the one;
the refusal to pip-install into an externally managed interpreter is checked on `./launch.sh test` itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the real interpreter behind this one (a venv's python is a link to it)
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
SYSTEM_PATH = "/usr/bin:/bin"
LAUNCH_TOOLS = ("dirname", "cksum", "cut", "grep", "sed", "ls", "sort", "rm", "cat", "uname")


@pytest.fixture(scope="module")
def tools(tmp_path_factory) -> str:
    """A PATH entry holding only the tools launch.sh uses, so no system interpreter is found by accident."""
    bindir = tmp_path_factory.mktemp("tools")
    for tool in LAUNCH_TOOLS:
        found = shutil.which(tool, path=SYSTEM_PATH)
        if found:
            (bindir / tool).symlink_to(found)
    return str(bindir)


def _repo_copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy2(REPO / "launch.sh", root / "launch.sh")
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def _fake_bin(tmp_path: Path, **links: str) -> Path:
    """A directory of interpreters for PATH: name -> target (an executable path, or a shell script's body)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name, target in links.items():
        path = bindir / name
        if target.startswith("#!"):
            path.write_text(target)
            path.chmod(0o755)
        else:
            path.symlink_to(target)
    return bindir


def _launch(root: Path, *args: str, path: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON", "PYTHONHOME")}
    env.update(PATH=path, HOME=str(root.parent), **env_extra)
    return subprocess.run([shutil.which("bash", path=SYSTEM_PATH), str(root / "launch.sh"), *args], env=env, capture_output=True, text=True, timeout=300)


def _fields(stdout: str) -> dict:
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A virtual environment without pip or torch (cheap to make, quick to probe)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([BASE_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return venv


def test_explicit_python_is_used(tmp_path, bare_venv, tools):
    root = _repo_copy(tmp_path)
    python = str(bare_venv / "bin" / "python")
    result = _launch(root, "env", path=tools, PYTHON=python, VIRTUAL_ENV="/nonexistent/other-env")
    assert result.returncode == 0, result.stderr
    fields = _fields(result.stdout)
    assert fields["python"] == python and fields["from"] == "PYTHON"
    assert not (root / ".venv").exists()


def test_active_virtualenv_is_used(tmp_path, bare_venv, tools):
    root = _repo_copy(tmp_path)
    venv = bare_venv
    result = _launch(root, "env", path=f"{venv}/bin:{tools}", VIRTUAL_ENV=str(venv))
    assert result.returncode == 0, result.stderr
    fields = _fields(result.stdout)
    assert fields["python"] == f"{venv}/bin/python" and "active virtualenv" in fields["from"]
    assert fields["torch"].startswith("none")
    assert not (root / ".venv").exists()


def test_without_an_environment_it_makes_dot_venv_with_the_first_python_found(tmp_path, tools):
    """No PYTHON, no active environment: .venv/ is made with the first Python >= 3.9 on PATH (a `python3` that
    does not run is passed over) and reused afterwards."""
    root = _repo_copy(tmp_path)
    minor = f"python3.{sys.version_info[1]}"
    bindir = _fake_bin(tmp_path, python3="#!/bin/sh\nexit 1\n", **{minor: BASE_PYTHON})
    result = _launch(root, "env", path=f"{bindir}:{tools}")
    assert result.returncode == 0, result.stderr
    assert f"creating {root}/.venv with {bindir}/{minor}" in result.stdout
    fields = _fields(result.stdout)
    assert fields["python"] == f"{root}/.venv/bin/python" and ".venv" in fields["from"]
    made = subprocess.run([str(root / ".venv/bin/python"), "-c", "import sys; print(sys.prefix != sys.base_prefix)"],
                          capture_output=True, text=True, check=True, timeout=60)
    assert made.stdout.strip() == "True"
    again = _launch(root, "env", path=f"{bindir}:{tools}")
    assert again.returncode == 0 and "creating" not in again.stdout
    assert _fields(again.stdout)["python"] == f"{root}/.venv/bin/python"


def test_no_python_at_all_is_one_clear_line(tmp_path, tools):
    root = _repo_copy(tmp_path)
    bindir = _fake_bin(tmp_path, python3="#!/bin/sh\nexit 1\n")
    result = subprocess.run([shutil.which("bash", path=SYSTEM_PATH), str(root / "launch.sh"), "env"], capture_output=True,
                            text=True, timeout=120, env={"PATH": f"{bindir}:{tools}", "HOME": str(tmp_path)})
    assert result.returncode != 0
    assert "no Python >= 3.9 on PATH" in result.stderr
    assert not (root / ".venv").exists()


def _externally_managed_python(tmp_path: Path) -> Path:
    """An interpreter whose stdlib carries PEP 668's EXTERNALLY-MANAGED marker: the real one run with a
    PYTHONHOME whose lib/pythonX.Y links every stdlib entry except site-packages (so no torch imports)."""
    probe = subprocess.run([BASE_PYTHON, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                           capture_output=True, text=True, check=True, timeout=60)
    stdlib = Path(probe.stdout.strip())
    home = tmp_path / "managed"
    lib = home / "lib" / stdlib.name
    lib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name not in ("site-packages", "dist-packages", "EXTERNALLY-MANAGED"):
            (lib / entry.name).symlink_to(entry)
    (lib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=managed by the test\n")
    wrapper = tmp_path / "managed-python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONHOME="{home}" exec "{BASE_PYTHON}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_an_externally_managed_interpreter_is_never_installed_into(tmp_path, tools):
    root = _repo_copy(tmp_path)
    managed = _externally_managed_python(tmp_path)
    check = subprocess.run([str(managed), "-c", "import sys, sysconfig; print(sys.prefix == sys.base_prefix, sysconfig.get_path('stdlib'))"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and check.stdout.startswith("True " + str(tmp_path / "managed")), check.stderr
    listed = _launch(root, "env", path=tools, PYTHON=str(managed))
    assert listed.returncode == 0, listed.stderr
    assert _fields(listed.stdout)["externally managed"].startswith("yes")
    result = _launch(root, "test", path=tools, PYTHON=str(managed))
    assert result.returncode != 0
    assert "externally managed (PEP 668): launch.sh does not install into it" in result.stderr
    assert "Collecting" not in result.stdout and "pip install" not in result.stdout.replace("'pip install", "")
    assert not (root / ".venv").exists()


def test_torch_2_1_constraints_file_meets_pyproject():
    """The file launch.sh applies to a torch 2.1.x exists, and each version it pins meets pyproject's bounds."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    constraints = REPO / "constraints" / "torch2.1.txt"
    assert "constraints/torch2.1.txt" in (REPO / "launch.sh").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    bounds = {canonicalize_name(r.name): r.specifier for r in declared}
    pinned = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pinned[canonicalize_name(req.name)] = req.specifier
    assert pinned["torch"].contains("2.1.2") and pinned["torch"].contains("2.1.0") and not pinned["torch"].contains("2.2.0")
    for name in ("numpy", "pyarrow", "datasets", "transformers", "accelerate", "deepspeed", "huggingface-hub"):
        assert name in pinned, f"{constraints.name} pins no {name}"
    for name, spec in pinned.items():
        exact = [s.version for s in spec if s.operator == "=="]
        if exact and name in bounds:
            assert bounds[name].contains(exact[0], prereleases=True), f"{name}=={exact[0]} is outside pyproject's {bounds[name]}"
