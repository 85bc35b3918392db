"""Kill a ``kd-keras run`` with SIGKILL at a chosen training checkpoint, then resume it (used by each study's test).

The killed process is a real ``kd-keras`` run in a subprocess whose ``TrainingCheckpoint.save`` sends SIGKILL to
its own process right after the ``kill_at``-th checkpoint is on disk: a deterministic point in the middle of a
training (a checkpoint is written every ``save_every_steps`` steps and at every epoch end), with nothing flushed
or closed, as when a machine dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_KILLER = """
import os, signal, sys
from kd_keras.engine import callbacks
original, count = callbacks.TrainingCheckpoint.save, [0]
def save(self):
    original(self)
    count[0] += 1
    if count[0] == {kill_at}:
        print("killing at checkpoint", count[0], self.directory, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
callbacks.TrainingCheckpoint.save = save
from kd_keras.cli import main
sys.exit(main({argv!r}))
"""


def kd_keras(argv: Sequence[str], timeout: float = 600, kill_at: int | None = None) -> subprocess.CompletedProcess:
    """``kd-keras *argv`` in a subprocess (killed at its ``kill_at``-th training checkpoint when given)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    if kill_at is None:
        code = f"import sys; from kd_keras.cli import main; sys.exit(main({list(argv)!r}))"
    else:
        code = _KILLER.format(kill_at=int(kill_at), argv=list(argv))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO)


def kill_then_resume(argv: Sequence[str], kill_at: int = 1, timeout: float = 600) -> tuple[
        subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """Run ``argv`` killed at a checkpoint, then the same with ``--resume``; returns both processes.

    Asserts that the first really died of SIGKILL mid-training and that the second finished.
    """
    killed = kd_keras(argv, timeout, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stdout[-2000:], killed.stderr[-3000:])
    assert "killing at checkpoint" in killed.stdout
    resumed = kd_keras([*argv, "--resume"], timeout)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return killed, resumed


def stage(out: Path, name: str) -> dict:
    """The recorded result of stage ``name`` in run folder ``out``."""
    return json.loads((Path(out) / "stages" / f"{name}.json").read_text())


def numbers(value, skip: Sequence[str] = ("seconds", "path", "cache", "file", "started", "finished")) -> object:
    """``value`` with its timing and path entries dropped: what must be equal between two runs."""
    if isinstance(value, dict):
        return {k: numbers(v, skip) for k, v in value.items() if k not in skip and not k.endswith("seconds")}
    if isinstance(value, list):
        return [numbers(v, skip) for v in value]
    return value
