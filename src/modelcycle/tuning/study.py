"""The Optuna side: the storage (with heartbeats), samplers, pruners and the study record.

Every study lives in an RDB storage, even with one worker: a sqlite file beside the trials makes
a study resumable (the same command again continues it), and a shared server URL lets workers on
several machines join it. Heartbeats let the survivors mark a dead worker's trial FAIL.
Tested against a real PostgreSQL server (tests/tuning/test_postgres.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from modelcycle.config import TrainSection, TuneSection
from modelcycle.errors import ConfigError, UserError
from modelcycle.progress import warn
from modelcycle.tuning.space import SearchSpace

# what to install for SQLAlchemy's driver name; with SQLAlchemy 2.1, postgresql:// means psycopg (3)
# and mysql:// means mysqlclient (MySQLdb)
DRIVERS = {
    "psycopg": "'psycopg[binary]' (for postgresql:// and postgresql+psycopg://)",
    "psycopg2": "psycopg2-binary (for postgresql+psycopg2://; or use postgresql:// with 'psycopg[binary]')",
    "pymysql": "PyMySQL (for mysql+pymysql://)",
    "mysqldb": "mysqlclient (for mysql://; or use mysql+pymysql:// with PyMySQL)",
}
SERVERS = ("postgresql", "mysql")
EXAMPLE_URLS = "sqlite:///runs/study.db or postgresql://user:password@host:5432/optuna"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Optuna's own log lines off (our line per trial and the report replace them), and no
    warning that heartbeats and retries are experimental: neither is the user's concern."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def redact(url: str) -> str:
    """The URL as it may be printed: without its password."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def open_storage(url: str, tune: TuneSection) -> optuna.storages.RDBStorage:
    """Connect (creating the tables on first use); every way this fails is a UserError naming the URL."""
    shown = redact(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"storage {url!r} is not a database URL; write e.g. {EXAMPLE_URLS}") from None
    backend = parsed.get_backend_name()
    engine_kwargs: dict = {}
    if backend == "sqlite":
        _check_sqlite(parsed.database, shown)
        engine_kwargs["connect_args"] = {"timeout": 60}  # workers wait for each other's writes instead of failing
    elif backend in SERVERS:
        engine_kwargs["pool_pre_ping"] = True  # a connection the server dropped between trials is replaced
        engine_kwargs["connect_args"] = {"connect_timeout": 10}  # a firewalled host fails in seconds, not minutes
    try:
        with quiet(), _schema_lock(url, backend, engine_kwargs):
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=tune.heartbeat_s,
                grace_period=tune.grace_s,
                # a dead worker's trial is run once more with the same parameters
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
    except ImportError as exc:
        try:
            driver = DRIVERS.get(parsed.get_driver_name(), f"the Python driver for {parsed.drivername}")
        except sqlalchemy.exc.SQLAlchemyError:  # no such dialect
            driver = f"the Python driver for {parsed.drivername}"
        raise UserError(
            f"storage {shown}: its database driver is not installed ({exc.__cause__ or exc}); install {driver} "
            "in this environment, or use a sqlite:///PATH file on one machine"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise UserError(
            f"storage {shown} cannot be used: {reason}. Check that the database server is running and reachable "
            "from this machine and that the URL (user, password, host, port, database) is right"
        ) from None


@contextlib.contextmanager
def _schema_lock(url: str, backend: str, engine_kwargs: dict) -> Iterator[None]:
    """Optuna creates its tables and stamps their version on first use, in several transactions
    and without a lock: two commands started at once on an empty PostgreSQL database (one per
    machine) both try, and one of them fails (``duplicate key value violates unique constraint
    "pg_type_typname_nsp_index"``, seen every time in a test). A session-level advisory lock held
    on a connection of its own makes them take turns; the second finds the tables made."""
    if backend != "postgresql":
        yield
        return
    key = int.from_bytes(hashlib.sha256(b"modelcycle: optuna schema").digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **engine_kwargs)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:  # closing the connection would release it too
                with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()


def _check_sqlite(database: str | None, shown: str) -> None:
    if not database or database == ":memory:":
        raise UserError(f"storage {shown}: an in-memory database can be neither shared nor resumed; name a file")
    folder = Path(database).parent
    if not folder.is_dir():
        raise UserError(
            f"storage {shown}: the folder {folder} does not exist; create it, or leave --storage out to use "
            "RUN_DIR/STUDY/study.db"
        )


def make_sampler(tune: TuneSection, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    if tune.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=tune.startup_trials)


def make_pruner(tune: TuneSection, epochs: int) -> optuna.pruners.BasePruner:
    """Pruners compare trials epoch by epoch: the step is the epoch (1-based)."""
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=tune.prune_startup_trials, n_warmup_steps=tune.prune_warmup_epochs
        )
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(storage: optuna.storages.RDBStorage, name: str, train: TrainSection, space: SearchSpace) -> optuna.Study:
    """Create the study, or continue it if it exists and optimises the same metric."""
    direction = "maximize" if train.monitor_direction == "max" else "minimize"
    study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True)
    made_for = study.user_attrs.get("monitor", train.monitor)
    if made_for != train.monitor or study.direction.name.lower() != direction:
        raise ConfigError(
            f"study {name} in {redact(storage.url)} was made to {study.direction.name.lower()} {made_for}, but "
            f"train.monitor is {train.monitor} ({direction}); use the same monitor or another --study name"
        )
    study.set_user_attr("monitor", train.monitor)
    if study.user_attrs.get("space", space.describe()) != space.describe():
        warn(f"study {name}: the search space {space.path} differs from the one its earlier trials used")
    study.set_user_attr("space", space.describe())
    return study


# ---------------------------------------------------------------- counting trials


def finished(trial: FrozenTrial) -> bool:
    """Does the trial count toward --trials? Completed and pruned ones do, and failures the trial's
    own settings caused (NaN loss: recorded as ``error``). A trial lost with its worker (killed,
    interrupted) does not: it says nothing about its parameters."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and "error" in trial.user_attrs
    )


@dataclass(frozen=True)
class Tally:
    finished: int
    running: int
    waiting: int
    succeeded: int  # COMPLETE or PRUNED

    @classmethod
    def of(cls, trials: Sequence[FrozenTrial]) -> Tally:
        return cls(
            finished=sum(map(finished, trials)),
            running=sum(t.state == TrialState.RUNNING for t in trials),
            waiting=sum(t.state == TrialState.WAITING for t in trials),
            succeeded=sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials),
        )


def best_trials(trials: Sequence[FrozenTrial], direction: optuna.study.StudyDirection, n: int) -> list[FrozenTrial]:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sorted(complete, key=lambda t: t.value, reverse=direction == optuna.study.StudyDirection.MAXIMIZE)[:n]
