"""kill -9 of a server while it logs: committed rows survive, the database opens cleanly, and what
is lost is at most the batch the writer had not committed yet."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
from monitor_images import b64_png

from modelcycle.monitor import log
from modelcycle.serve.process import ServerProcess

FLUSH_ROWS = 16
PER_REQUEST = 4


def test_kill_9_during_logging_loses_at_most_the_uncommitted_batch(digits_run: Path, train_images, tmp_path):
    folder = tmp_path / "log"
    bodies = [
        {"images": [b64_png(image) for image in train_images[i : i + PER_REQUEST]]} for i in range(0, 200, PER_REQUEST)
    ]
    acked = 0
    server = ServerProcess([digits_run], "--monitor", folder, f"monitor.flush_rows={FLUSH_ROWS}", "monitor.flush_s=0.2")
    killed = threading.Event()
    handled: list[int] = []  # images the log writer had taken from its queue just before the kill

    def client() -> None:
        """Sends requests one after another; kills the server right after an answer, as a crash would."""
        nonlocal acked
        with httpx.Client(timeout=30) as http:
            for i in range(10_000):
                response = http.post(server.url + "/v1/predict", json=bodies[i % len(bodies)])
                assert response.status_code == 200, response.text
                acked += PER_REQUEST
                if acked >= 240:
                    handled.append(_handled(http.get(server.url + "/metrics").text))
                    server.process.kill()  # SIGKILL: no shutdown hook runs
                    killed.set()
                    return
                time.sleep(0.02)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        thread.join(120)
        server.process.wait(30)
    finally:
        if server.process.poll() is None:  # the client failed before it killed the server
            server.process.kill()
    assert killed.is_set() and server.process.returncode == -9
    assert (folder / "predictions.db-wal").exists()  # the crash left the WAL for the next open to replay

    conn = log.open_log(folder)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    count, first, last = conn.execute("SELECT count(*), min(id), max(id) FROM predictions").fetchone()
    assert (first, last) == (1, count)  # whole transactions only: no gap, no torn batch
    # what the writer had taken is lost only as far as its unwritten batch (flush_rows, plus the rest of
    # the request that filled it); images still queued behind a writer slowed by a busy machine are
    # bounded by monitor.max_pending instead
    assert handled[0] - FLUSH_ROWS - PER_REQUEST <= count <= acked, (handled, acked, count)
    rows = log.read_rows(conn, "digits")
    assert not np.isnan(rows["brightness"]).any() and (rows["latency_ms"] > 0).all()
    # and the log takes new rows again
    writer = log.create(folder, {})
    log.insert(writer, [(time.time(), "digits", "v", 1, 1.0, 0, 0.9, *[0.5] * len(log.FEATURE_COLUMNS), None, None)])
    assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == count + 1


def _handled(metrics: str) -> int:
    """The ``modelcycle_monitor_logged`` counter of a /metrics page: images the writer has taken."""
    return int(
        sum(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("modelcycle_monitor_logged_total")
        )
    )
