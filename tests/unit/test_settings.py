"""One spelling of every setting across the services (``FARM_BROKER__URL`` for the
coordinator, the webapp and a worker alike); the worker's old spellings still work, with a
warning that names the setting to use."""

import logging
from pathlib import Path

import pytest

from coordinator.settings import CoordinatorSettings
from fleet_worker.settings import WorkerSettings
from webapp.settings import WebappSettings


def test_every_service_reads_the_broker_under_one_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_BROKER__URL", "mqtts://farm.example.org:8883")
    monkeypatch.setenv("FARM_BROKER__KEEPALIVE", "7")
    monkeypatch.setenv("FARM_WORKER_ID", "laptop-a")
    monkeypatch.setenv("FARM_API_KEY", "lf_secret")
    for settings in (CoordinatorSettings(), WebappSettings(), WorkerSettings()):
        assert settings.broker.url == "mqtts://farm.example.org:8883"
        assert settings.broker.keepalive == 7
    login = WorkerSettings().broker_login()
    assert (login.username, login.url) == ("laptop-a", "mqtts://farm.example.org:8883")
    assert login.password is not None
    assert login.password.get_secret_value() == "lf_secret"


def test_the_workers_old_spellings_still_work_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    env = tmp_path / "worker.env"
    env.write_text(
        "FARM_BROKER_URL=mqtt://old.example.org:1883\n"
        "FARM_BROKER_CA_FILE=/etc/ca.pem\n"
        "FARM_BROKER_KEEPALIVE_S=30\n"
    )
    with caplog.at_level(logging.WARNING):
        settings = WorkerSettings(_env_file=env)
    assert settings.broker.url == "mqtt://old.example.org:1883"
    assert settings.broker.ca_file == "/etc/ca.pem"
    assert settings.broker.keepalive == 30
    said = caplog.text
    assert "FARM_BROKER_URL is deprecated: use FARM_BROKER__URL instead" in said
    assert "FARM_BROKER_CA_FILE is deprecated: use FARM_BROKER__CA_FILE instead" in said
    assert "FARM_BROKER_KEEPALIVE_S is deprecated: use FARM_BROKER__KEEPALIVE instead" in said

    monkeypatch.setenv("FARM_BROKER__URL", "mqtt://new.example.org:1883")  # both: the new wins
    assert WorkerSettings(_env_file=env).broker.url == "mqtt://new.example.org:1883"
