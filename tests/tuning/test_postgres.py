"""``modelcycle tune --storage postgresql://...`` against a real PostgreSQL server, the way a study
is shared by several machines: two ``tune`` commands started at the same moment on an empty
database (each its own process and run folder, as two machines would be), one of them killed
with SIGKILL in the middle of a trial. The survivor marks the lost trial FAIL once its heartbeats
stop, runs it again with the same parameters, and the study ends with exactly ``--trials``
finished trials.

The server is Debian's PostgreSQL (``make test`` installs it as root, see the Makefile's
``postgres`` target). A session fixture runs initdb in a temporary folder and starts the server
on a free loopback port with password authentication; as root it runs both as the ``postgres``
user (the server refuses to run as root). Without the binaries or the Python driver the tests
are skipped, with the reason."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from helpers import assert_mentions, cli_env, tiny_overrides
from modelcycle import api
from modelcycle.errors import UserError
from modelcycle.tuning.study import Tally

USER, PASSWORD = "tuner", "pg-s3cret"
TRIALS = 4
SPACE = "train.lr: {type: float, low: 0.001, high: 0.1, log: true}\n"


def _server_binaries() -> Path | None:
    """Debian keeps the server's programs in /usr/lib/postgresql/VERSION/bin, off PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    if found := shutil.which("initdb"):
        candidates.append(Path(found).parent)
    return next((d for d in candidates if (d / "initdb").is_file() and (d / "pg_ctl").is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Callable[[str], str]]:
    """A PostgreSQL server of our own for the session; yields ``new_database(name) -> URL``."""
    binaries = _server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: `make test` installs Debian's postgresql")
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("the PostgreSQL driver psycopg is not installed: pip install -c constraints.txt -e '.[dev]'")
    as_root = os.geteuid() == 0
    if as_root:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
    folder = Path(tempfile.mkdtemp(prefix="modelcycle-pg-"))  # /tmp: the postgres user can reach it
    (folder / "password").write_text(PASSWORD + "\n")
    if as_root:
        for path in (folder, folder / "password"):
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def server(*command: str | Path) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
        result = subprocess.run([*prefix, *map(str, command)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout}\n{result.stderr}"

    data, port = folder / "data", _free_port()
    try:
        server(
            binaries / "initdb", "-D", data, "-U", USER, f"--pwfile={folder / 'password'}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "--encoding=UTF8", "--no-sync",
        )  # fmt: skip
        # fsync off: the server is thrown away with the test; a unix socket in our folder, not /var/run
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        server(binaries / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w", "-t", "60", "-o", options, "start")
        admin = sqlalchemy.create_engine(
            f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/postgres", isolation_level="AUTOCOMMIT"
        )

        def new_database(name: str) -> str:
            with admin.connect() as connection:
                connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
            return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{name}"

        yield new_database
        admin.dispose()
    finally:
        if (data / "postmaster.pid").exists():
            server(binaries / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def _overrides(prepared: Path, runs: Path, model: str) -> list[str]:
    """A linear model (about a second a trial); heartbeats every second, a trial without one for
    3 s is lost."""
    values = {"model__name": model, "model__args": "{}", "train__optimizer": "sgd", "train__epochs": 6}
    return [*tiny_overrides(prepared, runs, name="pg", **values), "tune.heartbeat_s=1", "tune.grace_s=3"]


@pytest.mark.slow
def test_two_tune_commands_share_a_postgres_study_and_make_up_a_killed_ones_trial(
    tmp_path, prepared, linear_model_file, postgres
):
    url = postgres("optuna_shared")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    study_args = ["--space", str(space), "--trials", str(TRIALS), "--sampler", "random"]
    study_args += ["--study", "shared", "--storage", url]

    def start(machine: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{machine}.log"
        overrides = _overrides(prepared, tmp_path / machine, linear_model_file)
        command = [sys.executable, "-m", "modelcycle", "tune", *overrides, *study_args]
        with open(log, "w") as out:  # a file, not a pipe: nobody reads until the end
            return subprocess.Popen(command, env=cli_env(), stdout=out, stderr=subprocess.STDOUT), log

    # both at once on an empty database: both set up Optuna's tables (study.py's schema lock)
    (doomed, doomed_log), (survivor, survivor_log) = start("a"), start("b")
    started = time.monotonic()
    try:
        deadline = started + 300
        while not any("fit start" in p.read_text() for p in (tmp_path / "a").glob("*/*/events.log")):
            assert doomed.poll() is None, f"worker a ended before its first trial:\n{doomed_log.read_text()}"
            assert time.monotonic() < deadline, "worker a never started a trial"
            time.sleep(0.05)
        os.kill(doomed.pid, signal.SIGKILL)  # in the middle of its trial's training
        assert doomed.wait(timeout=60) == -signal.SIGKILL
        assert survivor.wait(timeout=300) == 0, survivor_log.read_text()
    finally:
        for process in (doomed, survivor):
            if process.poll() is None:
                process.kill()
                process.wait()
    output = survivor_log.read_text()
    assert "Traceback" not in output and "error" not in output.lower(), output
    assert PASSWORD not in output and "***" in output  # the URL is printed without its password

    trials = [t for t in optuna.load_study(study_name="shared", storage=url).trials if not t.user_attrs.get("surplus")]
    lost = [t for t in trials if str(tmp_path / "a") in t.user_attrs.get("run", "") and t.state.name != "COMPLETE"]
    assert len(lost) == 1, [(t.number, t.state.name, t.user_attrs) for t in trials]
    lost = lost[0]
    assert lost.state.name == "FAIL" and "error" not in lost.user_attrs  # lost with its worker: not counted
    again = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert len(again) == 1 and again[0].state.name == "COMPLETE"
    assert again[0].params == lost.params and str(tmp_path / "b") in again[0].user_attrs["run"]
    assert Tally.of(trials).finished == TRIALS  # exactly --trials, none more
    assert [t.state.name for t in trials if t is not lost] == ["COMPLETE"] * TRIALS
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    assert_mentions(
        (tmp_path / "b" / "shared" / "study.md").read_text(),
        f"stopped sending heartbeats; run again as trial {again[0].number}",
        f"{TRIALS} of {TRIALS} count as finished",
    )

    # a third start (another machine) finds the study done: it runs nothing and reports every trial
    before = len(optuna.load_study(study_name="shared", storage=url).trials)
    third = _overrides(prepared, tmp_path / "c", linear_model_file)
    result = api.tune(None, space, third, trials=TRIALS, sampler="random", study="shared", storage=url)
    assert result.finished == TRIALS and len(optuna.load_study(study_name="shared", storage=url).trials) == before
    assert PASSWORD not in result.storage and not list((tmp_path / "c" / "shared").glob("trial-*"))
    print(f"postgres study: {time.monotonic() - started:.1f}s for {len(trials)} trials on 2 workers")


def test_a_postgres_url_that_cannot_be_used_says_why(tmp_path, postgres):
    """A wrong password and a missing database are refused with the server's reason, before any
    trial, and the password is not repeated; a driver that is not installed is named."""
    from modelcycle.config import load_config
    from modelcycle.tuning.study import open_storage

    tune = load_config(None, []).tune
    url = postgres("optuna_refusals")
    for bad, reason in [
        (url.replace(PASSWORD, "wrong-pw"), "password authentication failed"),
        (url.replace("optuna_refusals", "no_such_db"), 'database "no_such_db" does not exist'),
    ]:
        with pytest.raises(UserError) as info:
            open_storage(bad, tune)
        assert_mentions(str(info.value), "cannot be used", reason, "***")
        assert "wrong-pw" not in str(info.value) and PASSWORD not in str(info.value)
    assert isinstance(open_storage(url, tune), optuna.storages.RDBStorage)
    if importlib.util.find_spec("psycopg2") is None:  # SQLAlchemy 2.1: postgresql:// is psycopg 3, not psycopg2
        with pytest.raises(UserError, match=r"driver is not installed.*install psycopg2-binary"):
            open_storage(url.replace("postgresql://", "postgresql+psycopg2://"), tune)
