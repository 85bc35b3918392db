"""Distribution: for every objective, one training step on 2 replicas (2 logical CPU devices, see conftest.py)
gives the same student weights and the same reported losses as on 1 device (SGD, fixed init, same global
batch); strategy flags; two workers on loopback through TF_CONFIG."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_keras.data import schema
from kd_keras.engine import Distiller, get_objective, get_strategy, global_batch_size, list_objectives
from kd_keras.engine.distribute import replica_rows, tf_config_workers

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE, N = 16, 8


def tiny_model(name, classes=3, channels=4, seed=0):
    init = lambda i: keras.initializers.GlorotUniform(seed=seed * 10 + i)  # noqa: E731
    x = keras.Input((SIZE, SIZE, 1), name="image")
    h = keras.layers.Rescaling(1 / 255.0)(x)
    h = keras.layers.Conv2D(
        channels, 3, padding="same", activation="relu", name="stage1", kernel_initializer=init(1)
    )(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(
        channels, 3, padding="same", activation="relu", name="stage2", kernel_initializer=init(2)
    )(h)
    f = keras.layers.GlobalAveragePooling2D(name="features")(h)
    out = keras.layers.Dense(classes, name="logits", kernel_initializer=init(3))(f)
    return keras.Model(x, out, name=name)


class FlipWidth(keras.layers.Layer):
    """Deterministic student augmentation (random noise cannot match across replica layouts)."""

    def call(self, x, training=False):
        return x[:, :, ::-1, :] if training else x


def make_batch(classes=3, n=N):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n)
    return {
        schema.IMAGE: rng.uniform(0, 255, (n, SIZE, SIZE, 1)).astype("float32"),
        schema.VIEW2: rng.uniform(0, 255, (n, SIZE, SIZE, 1)).astype("float32"),
        schema.LABEL: labels.astype("int32") if classes > 1 else (labels % 2).astype("float32"),
        schema.LABELED: (np.arange(n) % 2).astype("float32"),
    }


# name -> (objective config, Distiller options, number of logits)
CASES = {
    "hard_label": ({}, {}, 3),
    "hinton": ({"alpha": 0.3, "temperature": 2.0}, {}, 3),
    "hinton_binary_one_logit": ({"name": "hinton", "temperature": 2.0}, {}, 1),
    "soft_target_student_teacher": ({}, {}, 3),
    "conditional": ({"temperature": 2.0}, {}, 3),
    "pseudo_label": ({}, {}, 3),
    "noisy_student": ({"student_augmentation": "flip"}, {}, 3),
    "attention_transfer": ({"student_taps": ["stage1"], "teacher_taps": ["stage2"], "beta": 10.0}, {}, 3),
    "attention_transfer_zagoruyko": (
        {
            "name": "attention_transfer",
            "student_taps": ["stage2"],
            "teacher_taps": ["stage2"],
            "variant": "zagoruyko",
            "beta": 0.01,
        },
        {},
        3,
    ),
    "fitnets": ({"student_tap": "stage1", "teacher_tap": "stage2"}, {}, 3),
    "simclr": ({"projection_dim": 8, "temperature": 0.1}, {"teacher": False}, 3),
    "fixmatch": ({"threshold": 0.3}, {"teacher": False}, 3),
    "fixmatch_ema_teacher": (
        {"name": "fixmatch", "threshold": 0.3, "guess_with": "teacher"},
        {"teacher": False, "ema_decay": 0.9},
        3,
    ),
    "mixmatch": ({"seed": 3, "lambda_u": 10.0}, {"teacher": False}, 3),
    "keras_distillation": ({"alpha": 0.3}, {}, 3),
}


def test_every_registered_objective_has_a_replica_case():
    covered = {config.get("name", case) for case, (config, _, _) in CASES.items()}
    assert covered == set(list_objectives())


def run_one_step(case, strategy, n=N):
    config, options, classes = CASES[case]
    config = dict(config)
    name = config.pop("name", case)
    keras.utils.set_random_seed(5)  # objective layers (regressor, projection head) initialise alike
    with strategy.scope():
        student = tiny_model("student", classes, seed=1)
        teacher = tiny_model("teacher", classes, channels=4, seed=2) if options.get("teacher", True) else None
        if config.get("student_augmentation") == "flip":
            config["student_augmentation"] = FlipWidth()
        distiller = Distiller(student, teacher, ema_decay=options.get("ema_decay"))
        distiller.compile(keras.optimizers.SGD(0.5, momentum=0.9), objective=get_objective(name, **config))
    stream = tf.data.Dataset.from_tensor_slices(make_batch(classes, n)).batch(N)
    history = distiller.fit(stream, epochs=1, verbose=0, shuffle=False)
    return (
        {k: v[-1] for k, v in history.history.items()},
        [w.numpy() for w in student.trainable_weights],
        [w.numpy() for w in distiller.teacher.weights] if options.get("ema_decay") else [],
    )


@pytest.fixture(scope="module")
def strategies():
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs 2 logical CPU devices (configured in tests/conftest.py before TensorFlow starts)")
    return tf.distribute.OneDeviceStrategy("/cpu:0"), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_replicas_give_the_same_step_as_one_device(case, strategies):
    check_same_step(case, strategies, N)


@pytest.mark.parametrize("case", ["simclr", "mixmatch"])
def test_uneven_replica_batches_gather_the_right_examples(case, strategies):
    check_same_step(case, strategies, N - 1)  # a last partial batch: 4 + 3 examples on the two replicas


def check_same_step(case, strategies, n):
    one, two = strategies
    assert two.num_replicas_in_sync == 2
    logs_1, weights_1, ema_1 = run_one_step(case, one, n)
    logs_2, weights_2, ema_2 = run_one_step(case, two, n)
    assert logs_1.keys() == logs_2.keys()
    for key in logs_1:
        assert logs_2[key] == pytest.approx(logs_1[key], abs=1e-5, rel=1e-5), key
    moved = 0.0
    for w1, w2, w0 in zip(
        weights_1,
        weights_2,
        [w.numpy() for w in tiny_model("s", CASES[case][2], seed=1).trainable_weights],
        strict=True,
    ):
        np.testing.assert_allclose(w2, w1, atol=1e-5)
        moved = max(moved, float(np.abs(w1 - w0).max()))
    assert moved > 1e-4, "the step did not change the student: the comparison would be vacuous"
    for e1, e2 in zip(ema_1, ema_2, strict=True):
        np.testing.assert_allclose(e2, e1, atol=1e-5)


def test_a_seeded_augmented_stream_gives_two_replicas_the_batches_of_one_device(strategies):
    # Every new iterator of a seeded training stream draws the next permutation (make_dataset's per-epoch
    # Dataset.random) and its prefetch advances the augmentation's seed state: Keras' symbolic build under a
    # strategy made a throw-away iterator, so two replicas trained on other batches than one device.
    from kd_keras.data.augment import build_augmenter
    from kd_keras.data.pipeline import make_dataset
    from kd_keras.data.preprocess import PreprocessConfig
    from kd_keras.data.records import Records

    n = 4 * N
    images = np.random.default_rng(0).integers(0, 255, (n, SIZE, SIZE, 1)).astype(np.uint8)
    records = Records(paths=None, labels=np.arange(n) % 3, patients=np.arange(n).astype(str),
                      class_names=("a", "b", "c"), task="multiclass", images=images,
                      array_index=np.arange(n, dtype=np.int64))

    def two_steps(strategy):
        keras.utils.set_random_seed(5)
        with strategy.scope():
            student = tiny_model("student", seed=1)
            distiller = Distiller(student, None)
            distiller.compile(keras.optimizers.SGD(0.5), objective="hard_label")
            augmenter = build_augmenter(flip="horizontal", seed=0)
        stream = make_dataset(records, PreprocessConfig((SIZE, SIZE), channels=1), N, repeat=True, seed=3,
                              augmenter=augmenter)
        distiller.fit(stream, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
        return [w.numpy() for w in student.trainable_weights]

    # One device as `--strategy default` runs it: no strategy at all (a OneDeviceStrategy made the same detour).
    one, two = two_steps(tf.distribute.get_strategy()), two_steps(strategies[1])
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5)


def test_strategy_flags(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert get_strategy("default").num_replicas_in_sync == 1
    if len(tf.config.list_logical_devices("CPU")) >= 2:
        mirrored = get_strategy("mirrored:/cpu:0,/cpu:1")
        assert isinstance(mirrored, tf.distribute.MirroredStrategy) and mirrored.num_replicas_in_sync == 2
        assert global_batch_size(16, mirrored) == 32
    if not tf.config.list_logical_devices("GPU"):
        assert get_strategy("auto").num_replicas_in_sync == 1
        # Without a GPU, mirrored means the logical CPU devices (conftest.py makes 2).
        cpus = len(tf.config.list_logical_devices("CPU"))
        if cpus >= 2:
            assert get_strategy("mirrored").num_replicas_in_sync == cpus
        else:
            with pytest.raises(ValueError, match="no GPU found and one CPU device"):
                get_strategy("mirrored")
    with pytest.raises(ValueError, match="unknown strategy 'horovod'"):
        get_strategy("horovod")
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        get_strategy("multiworker")


def test_tf_config_parsing():
    cluster = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}
    assert tf_config_workers({"TF_CONFIG": json.dumps(cluster)}) == 2
    assert tf_config_workers({}) == 0
    with pytest.raises(ValueError, match="TF_CONFIG is not valid"):
        tf_config_workers({"TF_CONFIG": '{"cluster": {}}'})


WORKER = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    from kd_keras.engine import get_strategy
    strategy = get_strategy("auto")  # multiworker from TF_CONFIG, before any other TensorFlow work
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    import keras, numpy as np
    sys.path.insert(0, os.environ["KD_TEST_DIR"])
    from test_distribute import make_batch, tiny_model, N
    from kd_keras.engine import Distiller, get_objective
    with strategy.scope():
        student, teacher = tiny_model("student", seed=1), tiny_model("teacher", seed=2)
        distiller = Distiller(student, teacher)
        distiller.compile(keras.optimizers.SGD(0.5), objective=get_objective("hinton", alpha=0.3))
    stream = tf.data.Dataset.from_tensor_slices(make_batch()).batch(N).repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    history = distiller.fit(stream.with_options(options), epochs=1, steps_per_epoch=2, verbose=0,
                            shuffle=False)
    np.savez(sys.argv[1], loss=history.history["loss"][-1], *[w.numpy() for w in student.trainable_weights])
    # Prediction (pseudo-labels, evaluation): every worker passes the same batch and computes only its replica's
    # share of the rows; each gets every row back, in order.
    from test_distribute import with_replica_id
    from kd_keras.engine.distribute import local_rows, predict_on_batch
    with strategy.scope():
        probe = with_replica_id(tiny_model("probe", seed=3))
    images = make_batch()["image"]
    outputs = {}
    for rows in (8, 7, 1):
        outputs[f"logits{rows}"], outputs[f"replica{rows}"] = predict_on_batch(probe, images[:rows])
        outputs[f"here{rows}"] = local_rows(rows, strategy)
    np.savez(sys.argv[1].replace(".npz", "_predict.npz"), **outputs)
""")


class ReplicaId(keras.layers.Layer):
    """Which replica computed each row (0 outside a strategy's replicas)."""

    def call(self, x):
        context = tf.distribute.get_replica_context()
        replica = context.replica_id_in_sync_group if context is not None else 0
        return tf.fill([tf.shape(x)[0], 1], tf.cast(replica, tf.float32))


def with_replica_id(model: keras.Model) -> keras.Model:
    return keras.Model(model.input, [model.output, ReplicaId(name="replica")(model.output)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_on_loopback_match_one_device(tmp_path, strategies):
    ports = [free_port(), free_port()]
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers = []
    for index in range(2):
        tf_config = {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps(tf_config),
            "KD_TEST_DIR": str(Path(__file__).parent),
            "PYTHONPATH": str(REPO_ROOT),
            "CUDA_VISIBLE_DEVICES": "",
        }
        workers.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / f"worker{index}.npz")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=150)[0])
    except subprocess.TimeoutExpired:
        # A deadlock in the collectives looks exactly like this: a failure, never a skip.
        for worker in workers:
            worker.kill()
        text = "\n".join(outputs + [worker.communicate()[0] for worker in workers[len(outputs) :]])
        pytest.fail("two local workers did not finish in 150 s (a deadlock?):\n" + text[-3000:])
    if any(w.returncode for w in workers):
        text = "\n".join(outputs)
        if any(
            s in text
            for s in (
                "UNAVAILABLE",
                "Connection refused",
                "Failed to connect",
                "DEADLINE_EXCEEDED",
                "Address already in use",
            )
        ):
            pytest.skip("the collective could not start on 127.0.0.1 in this sandbox: " + text.strip()[-300:])
        pytest.fail("a worker failed:\n" + text[-3000:])

    # Reference: the same two steps (same global batch of 8) on one device, in this process.
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        student, teacher = tiny_model("student", seed=1), tiny_model("teacher", seed=2)
        distiller = Distiller(student, teacher)
        distiller.compile(keras.optimizers.SGD(0.5), objective=get_objective("hinton", alpha=0.3))
    stream = tf.data.Dataset.from_tensor_slices(make_batch()).batch(N).repeat()
    history = distiller.fit(stream, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    for index in range(2):
        with np.load(tmp_path / f"worker{index}.npz") as saved:
            assert float(saved["loss"]) == pytest.approx(history.history["loss"][-1], abs=1e-5)
            for i, reference in enumerate(student.trainable_weights):
                np.testing.assert_allclose(saved[f"arr_{i}"], reference.numpy(), atol=1e-5)
    probe = tiny_model("probe", seed=3)  # the workers' probe, on one device
    for index in range(2):
        with np.load(tmp_path / f"worker{index}_predict.npz") as saved:
            for rows in (8, 7, 1):
                np.testing.assert_allclose(saved[f"logits{rows}"], probe(make_batch()[schema.IMAGE][:rows]).numpy(),
                                           atol=1e-5)
                # Worker r (replica r) computed the rows of share r: half the model's work each.
                shares = replica_rows(rows, 2)
                assert saved[f"replica{rows}"][:, 0].tolist() == [r for r, (a, b) in enumerate(shares)
                                                                  for _ in range(b - a)]
                assert int(saved[f"here{rows}"]) == shares[index][1] - shares[index][0]  # what it counts


def bn_model(name: str, seed: int = 0, classes: int = 3) -> keras.Model:
    """A seeded one-convolution model with BatchNorm (also tests/test_scale.py's model)."""
    x = keras.Input((SIZE, SIZE, 1), name="image")
    h = keras.layers.Rescaling(1 / 255.0)(x)
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stage1",
                            kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    f = keras.layers.GlobalAveragePooling2D(name="features")(h)
    out = keras.layers.Dense(classes, name="logits",
                             kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1))(f)
    return keras.Model(x, out, name=name)


def test_batch_norm_uses_the_global_batch_on_two_replicas(strategies):
    # The module's strategies: a second MirroredStrategy object in one process can collide with the first's
    # collective keys, so every replica test here shares one.
    def one_step(strategy):
        with strategy.scope():
            student = bn_model("student", seed=1)
            distiller = Distiller(student, bn_model("teacher", seed=5))
            distiller.compile(keras.optimizers.SGD(0.5), objective=get_objective("hinton", alpha=0.3))
        distiller.fit(tf.data.Dataset.from_tensor_slices(make_batch()).batch(N), epochs=1, verbose=0)
        return [w.numpy() for w in student.weights]

    one, two = (one_step(strategy) for strategy in strategies)
    start = [w.numpy() for w in bn_model("s", seed=1).weights]
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(b, a, atol=2e-5)
    assert max(float(np.abs(a - s).max()) for a, s in zip(one, start, strict=True)) > 1e-3
