"""Issue 14, item 2, for PPO: it runs its own loop (not the engine's), and takes the run lock too.
Slow: it needs a small SFT policy and a reward model first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli_env
from lm_fixtures import ppo_overrides
from modelcycle.runlock import LOCK_FILE, RunLocked

pytestmark = pytest.mark.slow

HOLD = (
    "import sys, time; from pathlib import Path; from modelcycle.runlock import RunLock; "
    "RunLock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(300)"
)


@pytest.fixture(scope="module")
def packages(prefs: Path, sft_policy: Path, reward_run) -> tuple[Path, Path, Path]:
    """(preference data, SFT policy package, reward run), the RLHF tests' (tests/conftest.py):
    enough to start PPO. Read only: PPO writes its own run."""
    return prefs, sft_policy, reward_run.path


def test_ppo_refuses_a_locked_run_and_takes_over_an_abandoned_lock(packages, tmp_path: Path):
    from modelcycle.api import train_ppo

    prefs, policy, reward = packages
    overrides = ppo_overrides(tmp_path, prefs, policy, reward, "run.name=ppo", "ppo.iterations=1")
    run = tmp_path / "runs" / "ppo"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=cli_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            train_ppo(None, overrides)
        assert not (run / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == holder.pid  # killed holding it
    train_ppo(None, overrides)
    events = (run / "events.log").read_text()
    assert f"took over the run lock left by pid {holder.pid} on {os.uname().nodename}" in events, events
    assert (run / LOCK_FILE).read_text() == ""
