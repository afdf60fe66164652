"""`llama-farm workers add|list|rotate|revoke` against a real SQLite file."""

import os
import subprocess
import sys
from pathlib import Path

import peewee as pw

from coordinator.db.database import migrate, open_database
from coordinator.db.tables import Worker, database_proxy
from coordinator.keys.hashing import verify_key


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FARM_DATABASE_URL=f"sqlite:///{tmp_path / 'farm.sqlite3'}")
    return subprocess.run(
        [sys.executable, "-m", "llama_farm.cli", "workers", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
    )


def key_of(output: str) -> str:
    return next(line.split()[-1] for line in output.splitlines() if line.startswith("api key:"))


def stored_hash(tmp_path: Path, worker_id: str) -> str:
    db = open_database(f"sqlite:///{tmp_path / 'farm.sqlite3'}")
    database_proxy.initialize(db)
    with db.connection_context():
        return str(Worker.get_by_id(worker_id).key_hash)


def test_add_rotate_revoke(tmp_path: Path) -> None:
    missing = cli(tmp_path, "list")  # no database here yet: none is made silently
    assert missing.returncode == 2
    assert "pass --create to make a new one" in missing.stderr
    assert not (tmp_path / "farm.sqlite3").exists()
    added = cli(tmp_path, "add", "--name", "Laptop A", "--create")
    assert added.returncode == 0, added.stderr
    key = key_of(added.stdout)
    assert key.startswith("lf_")
    assert len(key) >= 32
    assert "worker id: laptop-a" in added.stdout
    stored = stored_hash(tmp_path, "laptop-a")
    assert key not in stored
    assert verify_key(key, stored)

    rotated = cli(tmp_path, "rotate", "laptop-a")
    new_key = key_of(rotated.stdout)
    stored = stored_hash(tmp_path, "laptop-a")
    assert new_key != key
    assert verify_key(new_key, stored)
    assert not verify_key(key, stored)

    listing = cli(tmp_path, "list")
    assert "laptop-a" in listing.stdout
    assert key not in listing.stdout
    assert cli(tmp_path, "revoke", "laptop-a").returncode == 0
    assert "revoked" in cli(tmp_path, "list").stdout
    again = cli(tmp_path, "revoke", "laptop-a")
    assert again.returncode == 1
    assert "no active worker" in again.stderr
    assert cli(tmp_path, "add", "--name", "x", "--id", "bad/id").returncode == 1


def test_database_url_is_respected(tmp_path: Path) -> None:
    assert cli(tmp_path, "list", "--create").returncode == 0
    assert isinstance(open_database(f"sqlite:///{tmp_path / 'farm.sqlite3'}"), pw.SqliteDatabase)


def test_adds_of_one_name_at_once_each_get_an_id(tmp_path: Path) -> None:
    """Three admins adding "GPU box" at the same moment: the id made from the name is taken
    by the first; the others choose again, and every add succeeds with its own id."""
    assert cli(tmp_path, "list", "--create").returncode == 0  # the database exists
    env = dict(os.environ, FARM_DATABASE_URL=f"sqlite:///{tmp_path / 'farm.sqlite3'}")
    adds = [
        subprocess.Popen(
            [sys.executable, "-m", "llama_farm.cli", "workers", "add", "--name", "GPU box"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for _ in range(3)
    ]
    outputs = [add.communicate(timeout=60) for add in adds]
    assert [add.returncode for add in adds] == [0, 0, 0], [err for _, err in outputs]
    ids = sorted(
        line.split()[-1]
        for out, _ in outputs
        for line in out.splitlines()
        if line.startswith("worker id:")
    )
    assert ids == ["gpu-box", "gpu-box-2", "gpu-box-3"]


def test_beside_a_dev_farm_the_commands_use_its_database(tmp_path: Path) -> None:
    """`llama-farm api-keys add` run where `make run` keeps its database, with no database
    configured, makes its key there (it used to make ./farm.sqlite3 and a key that worked
    nowhere), and says so; a configured database wins."""
    dev = tmp_path / ".farm" / "dev.sqlite3"
    dev.parent.mkdir()
    made = open_database(f"sqlite:///{dev}")
    migrate(made)  # as `llama-farm dev` leaves it
    made.close()
    env = {k: v for k, v in os.environ.items() if k != "FARM_DATABASE_URL"}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "llama_farm.cli", *args],
            capture_output=True,
            text=True,
            env=env | extra,
            cwd=tmp_path,
            timeout=30,
        )

    added = run("api-keys", "add", "--name", "beside dev")
    assert added.returncode == 0, added.stderr
    assert f"database: sqlite:///{Path('.farm') / 'dev.sqlite3'} (the dev farm's" in added.stdout
    assert not (tmp_path / "farm.sqlite3").exists()
    assert "beside dev" in run("api-keys", "list").stdout
    elsewhere = run("workers", "list", FARM_DATABASE_URL=f"sqlite:///{tmp_path / 'other.db'}")
    assert elsewhere.returncode == 2  # configured, and missing: said, not made
    assert f"database: sqlite:///{tmp_path / 'other.db'}" in elsewhere.stdout
    assert "no llama-farm database at" in elsewhere.stderr
    # The coordinator's settings file, as the service reads it.
    settings = tmp_path / "coordinator.env"
    settings.write_text(f"FARM_DATABASE_URL=sqlite:///{dev.absolute()}\n")
    listed = run("api-keys", "list", "--env-file", str(settings))
    assert listed.returncode == 0, listed.stderr
    assert "beside dev" in listed.stdout
    assert run("api-keys", "list", "--env-file", "nope.env").returncode == 2
