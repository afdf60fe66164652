"""The server's service units in deploy/, checked by systemd itself (`systemd-analyze
verify`; the worker's user unit is verified as installed, in test_worker_service.py).
This machine runs no systemd; verifying is what it allows."""

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _verify(units: list[Path]) -> str:
    assert ANALYZE is not None
    checked = subprocess.run(
        [ANALYZE, "verify", *map(str, units)], capture_output=True, text=True, timeout=60
    )
    return (checked.stdout + checked.stderr).strip()


def _runnable(unit: Path, into: Path) -> Path:
    """The unit with its program swapped for one that exists here (verify checks that
    the ExecStart program is there), every other line as shipped."""
    text = unit.read_text()
    for program in ("/opt/llama-farm/bin/llama-farm", "/usr/sbin/mosquitto"):
        text = text.replace(program, "/bin/true")
    copy = into / unit.name
    copy.write_text(text)
    return copy


def test_the_server_units_verify(tmp_path: Path) -> None:
    units = sorted(DEPLOY.glob("*.service"))
    assert {u.name for u in units} == {
        "llama-farm-coordinator.service",
        "llama-farm-webapp.service",
        "mosquitto.service",
    }
    assert _verify([_runnable(u, tmp_path) for u in units]) == ""
    for name in ("llama-farm-coordinator.service", "llama-farm-webapp.service"):
        text = (DEPLOY / name).read_text()
        for option in (
            "RestartPreventExitStatus=2 3",
            "StateDirectory=llama-farm",
            "UMask=0077",
            "ProtectHome=true",
            "PrivateDevices=true",
            "RestrictAddressFamilies=",
            "SystemCallFilter=@system-service",
            "WorkingDirectory=/var/lib/llama-farm",
        ):
            assert option in text, f"{name} lacks {option}"
