"""The worker as its owner installs it: a wheel built from this tree, installed with its
`worker` extra into a fresh virtual environment (what pipx and uv tool do), from the
package index. It runs, says its version, carries no web framework and no database
driver, and explains a bad join line in one line."""

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from farm_runtime.entry import EXIT_CONFIG, version

ROOT = Path(__file__).resolve().parents[2]
LOCAL = (".git", ".venv", ".farm", "build", "*.egg-info", ".*_cache", ".hypothesis", "node_modules")


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


# A wheel build and an install from the package index: 10-30 s here, by how busy the
# machine is; its steps have their own 300 s limits, so the suite's 60 s would cut it short.
@pytest.mark.timeout(300)
def test_the_worker_installs_from_a_wheel_into_a_fresh_environment(tmp_path: Path) -> None:
    built = _run(
        sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", ROOT, "-w", "dist", cwd=tmp_path
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("llama_farm-*.whl")
    venv.create(tmp_path / "env", with_pip=True)
    bin_dir = tmp_path / "env" / "bin"
    installed = _run(bin_dir / "pip", "install", "-q", f"{wheel}[worker]", cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr

    shown = _run(bin_dir / "fleet-worker", "--version", cwd=tmp_path)
    assert shown.stdout.split() == ["fleet-worker", version()]
    light = _run(bin_dir / "python", "-c", "import quart", cwd=tmp_path)
    assert "No module named 'quart'" in light.stderr
    light = _run(bin_dir / "python", "-c", "import peewee", cwd=tmp_path)
    assert "No module named 'peewee'" in light.stderr

    joined = _run(bin_dir / "fleet-worker", "join", "lfj1_not-a-line", cwd=tmp_path)
    assert joined.returncode == EXIT_CONFIG
    assert joined.stderr.strip().startswith("fleet-worker join: this join line is damaged")
