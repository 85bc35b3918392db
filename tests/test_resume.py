"""Robust runs: a training process killed by SIGKILL in the middle of an epoch, restarted, ends with exactly
the weights of an uninterrupted run (seed_everything + deterministic ops, noisy student with dropout and a
random augmentation layer, SGD with momentum, a shuffled repeating stream)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras.data import schema
from kd_keras.engine import Distiller, TrainingCheckpoint, fit_resumable

REPO_ROOT = Path(__file__).resolve().parents[1]
KILL_AT_STEP = 7  # epoch 2 of 3 x 5 steps; the last checkpoint (every 2 steps) is step 6, mid-epoch

RUN = textwrap.dedent("""
    import os, sys, time
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import keras, numpy as np, tensorflow as tf
    from kd_keras.data import schema
    from kd_keras.engine import Distiller, fit_resumable, get_objective, seed_everything

    def tiny(name, dropout):
        x = keras.Input((16, 16, 1), name="image")
        h = keras.layers.Rescaling(1 / 255.0)(x)
        h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stage1")(h)
        h = keras.layers.GlobalAveragePooling2D(name="features")(h)
        h = keras.layers.Dropout(dropout, name="dropout")(h) if dropout else h
        return keras.Model(x, keras.layers.Dense(3, name="logits")(h), name=name)

    class Report(keras.callbacks.Callback):
        def __init__(self, hang_at):
            super().__init__()
            self.hang_at = hang_at
        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            print(f"step {step}", flush=True)
            if step == self.hang_at:
                time.sleep(300)  # the test kills the process here

    def train(directory, hang_at=-1):
        seed_everything(11)  # the only seed: initialisers, dropout, augmentation
        student, teacher = tiny("student", dropout=0.3), tiny("teacher", dropout=0.0)
        distiller = Distiller(student, teacher)
        distiller.compile(keras.optimizers.SGD(0.05, momentum=0.9), objective=get_objective(
            "noisy_student", student_augmentation=keras.layers.RandomFlip("horizontal"), soft=True))
        rng = np.random.default_rng(0)
        data = {schema.IMAGE: rng.uniform(0, 255, (40, 16, 16, 1)).astype("float32"),
                schema.LABEL: rng.integers(0, 3, 40).astype("int32"),
                schema.LABELED: (rng.uniform(size=40) < 0.5).astype("float32")}
        make_stream = lambda: tf.data.Dataset.from_tensor_slices(data).shuffle(40, seed=3).repeat().batch(8)
        fit_resumable(distiller, make_stream, epochs=3, steps_per_epoch=5, directory=directory,
                      save_every_steps=2, callbacks=[Report(hang_at)], verbose=0)
        return [w.numpy() for w in student.weights]

    mode, directory, out = sys.argv[1:4]
    if mode == "killed":
        train(directory, hang_at=int(sys.argv[4]))
    else:
        resumed = train(directory)
        print("uninterrupted", flush=True)
        uninterrupted = train(directory + "_uninterrupted")
        np.savez(out, *resumed, *uninterrupted)
""")


def _env():
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def test_killed_run_resumes_mid_epoch_to_the_same_weights(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    checkpoints = tmp_path / "checkpoints"
    killed = subprocess.Popen(
        [sys.executable, str(script), "killed", str(checkpoints), "-", str(KILL_AT_STEP)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    watchdog = threading.Timer(180, killed.kill)  # never hang the suite
    watchdog.start()
    try:
        seen = [
            line.strip()
            for line in iter(killed.stdout.readline, "")
            if line.startswith("step") and not _stop_at(line, killed)
        ]
    finally:
        watchdog.cancel()
        killed.wait()
    assert killed.returncode == -signal.SIGKILL, f"the run was not killed at step {KILL_AT_STEP}: {seen[-3:]}"
    state = json.loads((checkpoints / "training_state.json").read_text())
    assert state["global_step"] == KILL_AT_STEP - 1  # killed after step 7, last save at step 6 (mid-epoch 2)

    resumed = subprocess.run(
        [sys.executable, str(script), "resume", str(checkpoints), str(tmp_path / "w.npz")],
        capture_output=True,
        text=True,
        timeout=240,
        env=_env(),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [line for line in resumed.stdout.splitlines()]
    first_run = steps[: steps.index("uninterrupted")]
    assert first_run[0] == f"step {KILL_AT_STEP}" and first_run[-1] == "step 15"  # resumed, not restarted
    with np.load(tmp_path / "w.npz") as saved:
        arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    half = len(arrays) // 2
    for after_resume, uninterrupted in zip(arrays[:half], arrays[half:], strict=True):
        np.testing.assert_allclose(after_resume, uninterrupted, rtol=0, atol=1e-6)


def _stop_at(line: str, process: subprocess.Popen) -> bool:
    """SIGKILL the process once it reports the kill step (it then sleeps inside that step's callback)."""
    if line.strip() == f"step {KILL_AT_STEP}":
        process.send_signal(signal.SIGKILL)
    return False


def _tiny_student():
    x = keras.Input((16, 16, 1), name="image")
    h = keras.layers.GlobalAveragePooling2D(name="features")(keras.layers.Rescaling(1 / 255.0)(x))
    return keras.Model(x, keras.layers.Dense(2, name="logits")(h), name="student")


def test_fit_resumable_needs_a_repeating_stream_and_skips_finished_runs(tmp_path):
    distiller = Distiller(_tiny_student())
    distiller.compile(keras.optimizers.SGD(0.1))
    rng = np.random.default_rng(0)
    data = {
        schema.IMAGE: rng.uniform(0, 255, (8, 16, 16, 1)).astype("float32"),
        schema.LABEL: rng.integers(0, 2, 8).astype("int32"),
    }
    finite = lambda: tf.data.Dataset.from_tensor_slices(data).batch(4)  # noqa: E731
    with pytest.raises(ValueError, match="must repeat forever"):
        fit_resumable(distiller, finite, epochs=1, steps_per_epoch=2, directory=tmp_path)
    with pytest.raises(TypeError, match="pass a function that builds the stream"):
        fit_resumable(distiller, finite().repeat(), epochs=1, steps_per_epoch=2, directory=tmp_path)
    forever = lambda: finite().repeat()  # noqa: E731
    history = fit_resumable(
        distiller, forever, epochs=1, steps_per_epoch=2, directory=tmp_path, save_every_steps=1, verbose=0
    )
    assert len(history["loss"]) == 1
    assert json.loads((tmp_path / "training_state.json").read_text())["global_step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_000000002.seeds.npz",
        "step_000000002.weights.h5",
        "training_state.json",
    ]
    # Finished: a second call trains nothing; a fresh model restores the saved weights.
    assert fit_resumable(distiller, forever, epochs=1, steps_per_epoch=2, directory=tmp_path) == {}
    fresh = Distiller(_tiny_student())
    fresh.compile(keras.optimizers.SGD(0.1))
    assert TrainingCheckpoint.restore(fresh, tmp_path) == 2
    for a, b in zip(fresh.student.get_weights(), distiller.student.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(fresh.optimizer.iterations.numpy()) == 2
