"""remote/bootstrap.sh: set up once, then again with nothing to do, then pick up a new commit.

The repositories are local stand-ins (a package under python/ with an `all` extra, as
sglang-jax has; a flat one, as tunix) reached by file:// URLs: nothing is downloaded but pip.
"""

from __future__ import annotations

import os
import re
import site
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "remote" / "bootstrap.sh"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def stand_in_repo(root: Path, name: str, package_dir: str) -> Path:
    repo = root / name
    pkg = repo / package_dir if package_dir else repo
    module = name.replace("-", "_") + "_standin"
    (pkg / module).mkdir(parents=True)
    (pkg / module / "__init__.py").write_text("VERSION = 1\n")
    (pkg / "pyproject.toml").write_text(
        "[build-system]\nrequires = ['setuptools']\nbuild-backend = 'setuptools.build_meta'\n"
        f"[project]\nname = '{module}'\nversion = '0.1'\n"
        "[project.optional-dependencies]\nall = []\n"
        f"[tool.setuptools]\npackages = ['{module}']\n"
    )
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", ".", cwd=repo)
    commit(repo, "first")
    return repo


def commit(repo: Path, message: str) -> None:
    git(
        "-c", "user.name=t", "-c", "user.email=t@example.com",
        "commit", "-q", "--allow-empty", "-m", message, cwd=repo,
    )  # fmt: skip


@pytest.fixture
def place(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    origins = tmp_path / "origins"
    sglang = stand_in_repo(origins, "sglang-jax", "python")
    tunix = stand_in_repo(origins, "tunix", "")
    make_env(home)
    return home, sglang, tunix


def make_env(home: Path) -> None:
    """An environment an earlier bootstrap made; it sees this suite's jax, as a VM's has its own."""
    venv = home / ".venvs" / "t"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    (venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
     / "suite.pth").write_text(site.getsitepackages()[0] + "\n")  # fmt: skip


def bootstrap(home: Path, sglang: Path, tunix: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        HOME=str(home),
        PIP_NO_BUILD_ISOLATION="1",  # the stand-ins build with the env's own setuptools
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
    )
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        ["bash", str(SCRIPT), "--env", "venv", "--name", "t",
         "--python", f"{sys.version_info.major}.{sys.version_info.minor}",
         "--repos", str(home / "src"),
         "--sglang-jax", f"file://{sglang}", "--tunix", f"file://{tunix}", *extra],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def steps(out: str) -> list[str]:
    """The outcome of each step, times dropped."""
    return [re.sub(r" \([0-9.]+ s\)$", "", line[14:]) for line in out.splitlines()
            if line.startswith("[bootstrap]   ")]  # fmt: skip


@pytest.mark.slow  # three bootstrap runs with real venvs and pip: minutes on this CPU
def test_bootstrap_sets_up_then_finds_nothing_to_do_then_fast_forwards(place) -> None:
    home, sglang, tunix = place
    first = bootstrap(home, sglang, tunix)
    assert first.returncode == 0, first.stdout + first.stderr
    assert steps(first.stdout)[:5] == [
        "already there",  # the venv
        f"cloned at {git('rev-parse', '--short=12', 'HEAD', cwd=sglang)}",
        f"cloned at {git('rev-parse', '--short=12', 'HEAD', cwd=tunix)}",
        "upgraded",
        "installed",
    ]
    assert re.search(r"^JAX: \S+ cpu process 0/1 devices local=4 global=4$", first.stdout, re.M)
    assert all(re.search(r"\([0-9.]+ s\)$", line) for line in first.stdout.splitlines()
               if line.startswith("[bootstrap]   "))  # fmt: skip
    python = home / ".venvs" / "t" / "bin" / "python"
    check = "import sglang_jax_standin, tunix_standin; print(sglang_jax_standin.__file__)"
    where = subprocess.run([python, "-c", check], capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(home / "src" / "sglang-jax" / "python"))  # editable

    again = bootstrap(home, sglang, tunix)
    assert again.returncode == 0, again.stdout + again.stderr
    head = git("rev-parse", "HEAD", cwd=sglang)[:12]
    assert steps(again.stdout)[:6] == [
        "already there",
        f"up to date at {head}",
        f"up to date at {git('rev-parse', 'HEAD', cwd=tunix)[:12]}",
        "already upgraded",
        f"already installed at {head}",
        f"already installed at {git('rev-parse', 'HEAD', cwd=tunix)[:12]}",
    ]

    commit(sglang, "upstream moved on")
    git("tag", "v1", cwd=sglang)
    third = bootstrap(home, sglang, tunix)
    assert third.returncode == 0, third.stdout + third.stderr
    new = git("rev-parse", "HEAD", cwd=sglang)[:12]
    assert f"fast-forwarded {head} -> {new}" in steps(third.stdout)
    assert steps(third.stdout)[4] == "installed"  # sglang-jax again; tunix untouched
    assert steps(third.stdout)[5].startswith("already installed")

    # A fork given later is followed from then on; a tag pins; no ref goes back to the branch.
    fork = sglang.parent / "fork"
    subprocess.run(["git", "clone", "-q", str(sglang), str(fork)], check=True)
    commit(fork, "the fork's own change")
    pinned = bootstrap(home, fork, tunix, "--sglang-jax-ref", "v1")
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    assert steps(pinned.stdout)[1] == (
        f"origin was file://{sglang}; pinned (detached) at v1; up to date at {new}"
    )
    back = bootstrap(home, fork, tunix)
    assert back.returncode == 0, back.stdout + back.stderr
    forked = git("rev-parse", "HEAD", cwd=fork)[:12]
    assert steps(back.stdout)[1] == f"fast-forwarded {new} -> {forked}"

    # A recreated environment gets its packages again.
    import shutil

    shutil.rmtree(home / ".venvs" / "t")
    make_env(home)
    fresh = bootstrap(home, fork, tunix)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert steps(fresh.stdout)[4:6] == ["installed", "installed"]


def test_a_missing_python_version_is_explained(tmp_path: Path) -> None:
    out = subprocess.run(
        ["bash", str(SCRIPT), "--env", "venv", "--name", "x", "--python", "3.99"],
        env=dict(os.environ, HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 3
    assert "python3.99 is not installed" in out.stderr and "--env conda" in out.stderr


def test_unknown_options_are_refused_before_anything_happens(tmp_path: Path) -> None:
    out = subprocess.run(
        ["bash", str(SCRIPT), "--nope"],
        env=dict(os.environ, HOME=str(tmp_path)),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "unknown option --nope" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_flag_equals_value_is_read_as_the_flag_and_its_value(tmp_path: Path) -> None:
    """The console writes `--name=-x` for a value that starts with a dash."""
    from console.services.templates import BOOTSTRAP

    rendered = BOOTSTRAP.render(
        BOOTSTRAP.values("", {"env": "venv", "name": "-x", "python": "3.99"})
    )
    assert "--name=-x" in rendered.argv
    out = subprocess.run(
        ["bash", str(SCRIPT), *rendered.argv[2:]],
        env=dict(os.environ, HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 3, out.stderr  # got past the options, to the missing python
    assert "python3.99 is not installed" in out.stderr
