"""What the study recipes share: resolving a dataset layout, streams, one training stage, predictions, evaluation,
and writing a run's outputs (``results.json``, ``report.md``).

The recipes (:mod:`~kd_keras.studies.dr_kd_unlabeled`, :mod:`~kd_keras.studies.simclr_distill`,
:mod:`~kd_keras.studies.attention_transfer`) are multi-stage protocols; each stage is one
:func:`kd_keras.engine.train` call. Training, prediction, evaluation, head resolution and streams have one
implementation each in :mod:`kd_keras.engine` and :class:`kd_keras.data.tasks.HeadSpec`; the functions here of
the same names (``train_stage``, ``stream``, ``predict_logits``, ``evaluate``, ``score_fn``, ``head_size``,
``loss_task``, ``eval_task``) are thin adapters kept while the studies move to the engine API.

Example:

```python
from kd_keras.studies import common

records = common.load_labeled("eyepacs", "trainLabels.csv", image_dir="train", task="referable_dr")
stream = common.stream(records, config, batch_size=32, augmenter=build_augmenter(flip="horizontal"))
common.train_stage(student, stream, objective="hard_label", epochs=5, learning_rate=1e-3)
metrics = common.evaluate(student, test_records, config)
```
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kd_keras.data import sources, tasks
from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.data.records import Records
from kd_keras.data.tasks import HeadSpec
from kd_keras.engine import NonFiniteLossError, evaluate_model, get_objective, make_score_fn, predict, train_stream
from kd_keras.engine import train as engine_train
from kd_keras.engine.predict import estimate as metric_estimate
from kd_keras.evaluation.metrics import probabilities_from_logits
from kd_keras.evaluation.report import environment, write_json
from kd_keras.models.weights import WeightsUnavailableError

LAYOUTS = ("folders", "eyepacs", "messidor", "chexpert", "csv", "npz")


def load_labeled(
    layout: str,
    path: str,
    *,
    image_dir: str | None = None,
    task: str = "auto",
    uncertain: str = "zeros",
    label_column: str | None = None,
    file_column: str | None = None,
    npz_split: str = "train",
) -> Records:
    """A labeled source in any supported layout, with its task applied.

    Args:
        layout: ``"folders"`` (one folder per class), ``"eyepacs"`` (``trainLabels.csv``), ``"messidor"``
            (Messidor/Messidor-2 sheet as CSV), ``"chexpert"`` (CheXpert ``train.csv``), ``"csv"`` (a generic
            manifest: ``file_column`` and ``label_column``) or ``"npz"`` (MedMNIST-style arrays).
        path: the folder, CSV or ``.npz`` file.
        image_dir: where the CSV's images are (default: next to the CSV).
        task: ``"auto"`` (DR grades for the DR layouts, multi-label for CheXpert, classes as given otherwise),
            or a name of :func:`kd_keras.data.tasks.apply_task` (``"referable_dr"``, ``"dr_grades"``,
            ``"normal_vs_abnormal"``, ``"multiclass"``, ``"multilabel"``).
        uncertain: CheXpert's uncertain-label policy (``"zeros"``, ``"ones"``, ``"ignore"``).

    Example:
        >>> records = load_labeled("folders", "chest_xray/train")
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "folders":
        records = sources.from_class_folders(path)
    elif layout == "eyepacs":
        records = sources.eyepacs(path, image_dir)
    elif layout == "messidor":
        records = sources.messidor(path, image_dir)
    elif layout == "chexpert":
        records = sources.chexpert(path, image_dir, uncertain=uncertain)
    elif layout == "csv":
        records = sources.from_csv(path, image_dir, file_column=file_column, label_column=label_column)
    else:
        records = sources.from_npz(path, split=npz_split)
    if task == "auto":
        if layout in ("eyepacs", "messidor"):
            return tasks.dr_grades(records, n_grades=max(int(records.labels.max()) + 1, 2))
        return records
    return tasks.apply_task(records, task)


def head_size(records: Records) -> int:
    """Logits of the model head: :attr:`kd_keras.data.tasks.HeadSpec.size`."""
    return HeadSpec.of(records).size


def loss_task(records: Records) -> str:
    """The :mod:`kd_keras.engine.losses` task of ``records``: :attr:`kd_keras.data.tasks.HeadSpec.loss_task`."""
    return HeadSpec.of(records).loss_task


def eval_task(records: Records) -> str:
    """The evaluation task of ``records``: :attr:`kd_keras.data.tasks.HeadSpec.eval_task`."""
    return HeadSpec.of(records).eval_task


def stream(
    records: Records,
    config: PreprocessConfig,
    batch_size: int,
    *,
    augmenter: keras.Layer | None = None,
    view2_augmenter: keras.Layer | None = None,
    seed: int = 0,
    shuffle: bool = True,
    labels: np.ndarray | None = None,
) -> tf.data.Dataset:
    """A training stream of batch dicts over ``records``: :func:`kd_keras.engine.train_stream` (decoded images
    cached in memory when :func:`kd_keras.engine.fits_in_memory`).

    Args:
        labels: replaces the records' labels (pseudo-labels), same length as ``records``.
    """
    return train_stream(records, config, batch_size, augmenter=augmenter, view2_augmenter=view2_augmenter,
                        seed=seed, shuffle=shuffle, labels=labels)


def train_stage(
    student: keras.Model,
    train: tf.data.Dataset,
    *,
    objective: str | dict = "hard_label",
    teacher: keras.Model | None = None,
    epochs: int = 1,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
    optimizer: str = "adam",
    validation: Callable[[keras.Model], float] | None = None,
    curve_every: int = 0,
    bn_batches: int = 5,
    verbose: int = 0,
) -> dict[str, Any]:
    """One stage of a recipe: a thin adapter over :func:`kd_keras.engine.train` (kept so the studies run
    unchanged while they move to ``engine.train``; new code calls ``engine.train`` directly).

    ``engine.train(student, train, epochs=epochs, validation=validation, learning_rate=learning_rate,
    optimizer=optimizer, objective=objective, teacher=teacher, validate_every_steps=curve_every,
    bn_batches=bn_batches, metrics=None)``: one epoch is one pass over ``train``; ``"sgd"`` is SGD with momentum
    0.9 (:func:`kd_keras.engine.make_optimizer`).

    Args:
        validation: a function of the student returning a score (higher is better), called after every epoch
            (or every ``curve_every`` steps when > 0): the best student weights are kept at the end.
        curve_every: steps between validation points of the learning curve (0: once per epoch).
        bn_batches: training batches over which BatchNorm statistics are recomputed before every validation and
            at the end (:func:`~kd_keras.engine.recalibrate_batch_norm`; 0: keep Keras' moving averages).

    Returns:
        ``{"objective", "epochs", "loss": [...per epoch], "curve": [(step, score), ...], "best_score",
        "best_epoch" (from 0; None without validation), "seconds"}``.

    Raises:
        FloatingPointError: the loss became NaN or infinite.
    """
    name = get_objective(objective).name
    try:
        result = engine_train(student, train, epochs=epochs, validation=validation, learning_rate=learning_rate,
                              optimizer=optimizer, objective=objective, teacher=teacher,
                              validate_every_steps=curve_every, bn_batches=bn_batches, metrics=None,
                              verbose=verbose)
    except NonFiniteLossError as error:
        raise FloatingPointError(f"stage {name}: {error}") from None
    selected = validation is not None and result.best_epoch > 0
    return {
        "objective": get_objective(objective).get_config() | {"name": name},
        "epochs": epochs,
        "loss": result.losses,
        "curve": [(int(step), score) for step, score in result.curve],
        "best_score": result.best_score if selected else None,
        "best_epoch": result.best_epoch - 1 if selected else None,
        "seconds": result.seconds,
    }


def predict_logits(
    model: keras.Model, records: Records, config: PreprocessConfig, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """The model's logits over ``records`` (unaugmented) and the record positions they belong to:
    :func:`kd_keras.engine.predict` (``.logits``, ``.indices``)."""
    out = predict(model, records, config, batch_size)
    return out.logits, out.indices


def probabilities(logits: np.ndarray, records: Records) -> np.ndarray:
    """Class (softmax) or label (sigmoid) probabilities from logits."""
    return probabilities_from_logits(logits, multilabel=HeadSpec.of(records).eval_task == "multilabel")


def evaluate(
    model: keras.Model,
    records: Records,
    config: PreprocessConfig,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
) -> dict:
    """Accuracy, AUC (and more) of ``model`` on ``records`` with patient-clustered bootstrap CIs:
    :func:`kd_keras.engine.evaluate_model`."""
    return evaluate_model(model, records, config, n_boot=n_boot, seed=seed, batch_size=batch_size)


def estimate(metrics: dict, name: str) -> float:
    """The point estimate of ``metrics[name]`` (a CI dict or a number): :func:`kd_keras.engine.predict.estimate`."""
    return metric_estimate(metrics, name)


def score_fn(records: Records, config: PreprocessConfig, metric: str = "auc") -> Callable[[keras.Model], float]:
    """A validation function for :func:`train_stage` (no bootstrap): :func:`kd_keras.engine.make_score_fn`."""
    return make_score_fn(records, config, metric)


def mean_sd(values: Sequence[float]) -> dict:
    """``{"mean", "sd", "values"}`` over folds or repeats (sd with ddof=1; 0 for one value)."""
    arr = np.asarray(values, dtype=float)
    return {
        "mean": float(np.mean(arr)) if len(arr) else float("nan"),
        "sd": float(np.std(arr, ddof=1)) if len(arr) > 1 else 0.0,
        "values": [float(v) for v in arr],
    }


def pct(summary: dict) -> str:
    """``{"mean", "sd"}`` as a percentage ``"76.84 ± 1.20"``."""
    return f"{100 * summary['mean']:.2f} ± {100 * summary['sd']:.2f}"


def start_results(study: str, config: dict, seed: int, argv: Sequence[str] | None = None) -> dict:
    """The header every ``results.json`` carries: study, config, seed, command and environment."""
    return {
        "study": study,
        "config": config,
        "seed": seed,
        "command": " ".join(argv if argv is not None else sys.argv),
        "environment": environment(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def finish_outputs(out_dir: Path, results: dict, report_md: str) -> tuple[Path, Path]:
    """Write ``results.json`` and ``report.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    json_path = write_json(out_dir / "results.json", results)
    md_path = out_dir / "report.md"
    md_path.write_text(report_md)
    return json_path, md_path


def run_cli(main: Callable[[], int]) -> int:
    """Run a study CLI: a missing ImageNet file (offline) or a bad input ends in one clear line and exit 2."""
    try:
        return main()
    except WeightsUnavailableError as error:
        print(f"error: {str(error).splitlines()[0]} (use --teacher-weights none or give a weights file)",
              file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return 2
