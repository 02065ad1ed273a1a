"""Start ``modelcycle serve`` in a child process and wait until it answers: for scripts,
notebooks, benchmarks and tests that want a real server without managing ports by hand."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

_LISTENING = re.compile(r"listening on (http://\S+)")


class ServerProcess:
    """A running server. ``stop()`` sends SIGTERM (graceful: in-flight requests finish)."""

    def __init__(self, models: list[str | Path], *args: str, env: dict | None = None, timeout: float = 120):
        command = [sys.executable, "-m", "modelcycle", "serve", *map(str, models), "--port", "0", *args]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "COLUMNS": "400", **(env or {})},
        )
        self.lines: list[str] = []
        self._url = threading.Event()
        self.url = ""
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._url.wait(timeout) or not self._ready(timeout):
            self.stop()
            raise RuntimeError("the server did not start:\n" + self.log)

    def _pump(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.lines.append(line)
            if not self.url and (match := _LISTENING.search(line)):
                self.url = match.group(1)
                self._url.set()
        self._url.set()  # exited: stop waiting

    def _ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.url and time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=5) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        return False

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
