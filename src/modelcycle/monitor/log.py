"""The prediction log: one SQLite database per monitored server, ``DIR/predictions.db``.

Append-only, in WAL mode with ``synchronous=NORMAL``: a committed transaction survives a crash
of the server process (kill -9 included; only a power cut can take the last commits), readers
(``modelcycle monitor``, Grafana's SQLite plug-in, your own SQL) never block the writer, and the
file opens cleanly after a crash (SQLite replays the WAL on first open). The writer commits rows
in batches (``monitor.flush_rows`` or ``monitor.flush_s``), so a crash loses at most the batch it
had not committed yet. Features are plain columns, so the log answers SQL directly::

    SELECT model, avg(confidence), avg(brightness) FROM predictions GROUP BY model;
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

from modelcycle.errors import UserError
from modelcycle.monitor.features import COLOUR_FEATURES, GREY_FEATURES, SIZE

DB = "predictions.db"
SCHEMA_VERSION = "2"  # 2: the size column
FEATURE_COLUMNS = (*GREY_FEATURES, *COLOUR_FEATURES, SIZE)
COLUMNS = ("time", "model", "version", "request", "latency_ms", "label", "confidence", *FEATURE_COLUMNS)
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,          -- unix seconds when the answer was known
    model TEXT NOT NULL,
    version TEXT NOT NULL,       -- first 12 hex digits of the weights' sha256
    request INTEGER NOT NULL,    -- the images of one request share it
    latency_ms REAL NOT NULL,    -- queue + batch + model, for the request this image came in
    label INTEGER NOT NULL,      -- predicted class index
    confidence REAL NOT NULL,    -- max softmax
    {", ".join(f"{name} REAL" for name in FEATURE_COLUMNS)},  -- input features; colour ones NULL for greyscale,
                                 -- size (sqrt(width * height) as sent) NULL for images sent as tensors
    embedding BLOB,              -- float32 whitened embedding coordinates (see monitor/profile.py)
    input BLOB                   -- PNG of the image as the model saw it; only with monitor.keep_inputs
);
CREATE INDEX IF NOT EXISTS predictions_model ON predictions (model, id);
CREATE TABLE IF NOT EXISTS profiles (model TEXT, version TEXT, profile TEXT NOT NULL, PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def db_path(folder: str | Path) -> Path:
    return Path(folder) / DB


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def create(folder: str | Path, profiles: dict[tuple[str, str], dict]) -> sqlite3.Connection:
    """Open (or create) the log for writing and record the reference profile of each served
    (model, version), so ``modelcycle monitor DIR`` needs no --reference."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        conn = connect(db_path(folder))
        conn.executescript(SCHEMA)
    except (OSError, sqlite3.Error) as exc:
        raise UserError(
            f"cannot open the prediction log {db_path(folder)}: {exc}; choose another --monitor folder"
        ) from None
    upgrade(conn)
    for (model, version), profile in profiles.items():
        conn.execute("INSERT OR REPLACE INTO profiles VALUES (?, ?, ?)", (model, version, json.dumps(profile)))
    return conn


def upgrade(conn: sqlite3.Connection) -> None:
    """Bring a log written by an older server up to this schema: feature columns it lacks are
    added (their old rows read NULL there, which the drift tests leave out), so a server can
    keep appending to its log across an upgrade and the reader can read it."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
    for name in FEATURE_COLUMNS:
        if name not in present:
            conn.execute(f"ALTER TABLE predictions ADD COLUMN {name} REAL")
    stored = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if stored != (SCHEMA_VERSION,):  # a reader of an up-to-date log writes nothing
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))


def insert(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    """One transaction: all of ``rows`` are stored or none."""
    names = (*COLUMNS, "embedding", "input")
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO predictions ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", rows)
    conn.execute("COMMIT")


def open_log(folder: str | Path) -> sqlite3.Connection:
    """The log for reading; a log left by a crashed server is recovered here."""
    path = db_path(folder)
    if not path.is_file():
        raise UserError(
            f"{folder} holds no prediction log ({DB}); serve with `modelcycle serve RUN --monitor {folder}` first"
        )
    try:
        conn = connect(path)
        conn.execute("SELECT count(*) FROM predictions").fetchone()
        upgrade(conn)
    except sqlite3.Error as exc:
        raise UserError(f"{path} is not a readable prediction log: {exc}") from None
    return conn


def models(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT DISTINCT model FROM predictions ORDER BY model")]


def stored_profile(conn: sqlite3.Connection, model: str) -> dict | None:
    """The profile the server used for ``model`` (the newest version's, when it changed)."""
    row = conn.execute(
        "SELECT profile FROM profiles WHERE model = ? AND version = "
        "(SELECT version FROM predictions WHERE model = ? ORDER BY id DESC LIMIT 1)",
        (model, model),
    ).fetchone()
    return json.loads(row[0]) if row else None


def read_rows(conn: sqlite3.Connection, model: str, after: int = 0) -> dict[str, np.ndarray]:
    """Every logged row of ``model`` with id > ``after``, as one array per column."""
    names = ("id", *COLUMNS, "embedding")
    rows = conn.execute(
        f"SELECT {', '.join(names)} FROM predictions WHERE model = ? AND id > ? ORDER BY id", (model, after)
    ).fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    out: dict[str, np.ndarray] = {}
    for name, values in zip(names, columns, strict=True):
        if name == "embedding":
            # rows of another model version may have none, or other components: then none at all
            if values and None not in values and len({len(v) for v in values}) == 1:
                out[name] = np.stack([np.frombuffer(v, np.float32) for v in values]).astype(np.float64)
        elif name in ("model", "version"):
            out[name] = np.asarray(values, dtype=object)
        elif name in ("id", "request", "label"):
            out[name] = np.asarray(values, dtype=np.int64)
        else:
            out[name] = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return out
