"""What the study recipes share: resolving a dataset layout, streams, one training stage, predictions, evaluation,
and writing a run's outputs (``results.json``, ``report.md``).

The recipes (:mod:`~kd_keras.studies.dr_kd_unlabeled`, :mod:`~kd_keras.studies.simclr_distill`,
:mod:`~kd_keras.studies.attention_transfer`) are multi-stage protocols; each stage is a
:class:`~kd_keras.engine.Distiller` compiled with one objective and trained for some epochs on one stream. The
helpers here keep those recipes short enough to read top to bottom.

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

import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kd_keras.data import pipeline, schema, sources, tasks
from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.data.records import Records
from kd_keras.engine import Distiller, get_objective
from kd_keras.engine.training import recalibrate_batch_norm
from kd_keras.evaluation import metrics as metric_fns
from kd_keras.evaluation.report import environment, write_json
from kd_keras.evaluation.summary import evaluate_predictions
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
    """Logits of the model head: one per class (2 for a binary task, softmax) or one per label."""
    return len(records.class_names)


def loss_task(records: Records) -> str:
    """The :mod:`kd_keras.engine.losses` task of ``records`` (a softmax head for binary tasks)."""
    return "multilabel" if records.task == "multilabel" else "multiclass"


def eval_task(records: Records) -> str:
    """The :func:`~kd_keras.evaluation.summary.evaluate_predictions` task of ``records``."""
    if records.task == "multilabel":
        return "multilabel"
    return "binary" if len(records.class_names) == 2 else "multiclass"


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
    """A training stream of batch dicts over ``records`` (decoded images cached in memory after the first
    epoch when the set is small; augmentation after the cache so every epoch differs).

    Args:
        labels: replaces the records' labels (pseudo-labels), same length as ``records``.
    """
    if labels is not None:
        records = _with_labels(records, labels)
    small = len(records) * math.prod(config.image_size) * config.channels * 4 < 2**30
    return pipeline.make_dataset(
        records,
        config,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        augmenter=augmenter,
        view2_augmenter=view2_augmenter,
        cache=small,
        drop_remainder=False,
    )


def _with_labels(records: Records, labels: np.ndarray) -> Records:
    import dataclasses

    labels = np.asarray(labels)
    if len(labels) != len(records):
        raise ValueError(f"{len(labels)} labels for {len(records)} records")
    return dataclasses.replace(records, labels=labels.astype(records.labels.dtype if labels.ndim == 1 else "float32"),
                               labeled=np.ones(len(records), bool))


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
    """One stage of a recipe: ``student`` trained with ``objective`` (from ``teacher``) for ``epochs``.

    Args:
        validation: a function of the student returning a score (higher is better), called after every epoch
            (and every ``curve_every`` steps when > 0): the best student weights are kept at the end, as the
            studies that select "the best model over epochs" do.
        curve_every: steps between validation points of the learning curve (0: once per epoch).
        bn_batches: training batches over which BatchNorm statistics are recomputed before every validation and
            at the end (:func:`~kd_keras.engine.training.recalibrate_batch_norm`; 0: keep Keras' moving
            averages, which after a few dozen steps still mostly hold their initial values, so a short stage
            would predict one constant in inference mode).

    Returns:
        ``{"loss": [...per epoch], "curve": [(step, score), ...], "best_score", "best_epoch", "seconds"}``.
    """
    distiller = Distiller(student, teacher)
    optimizers = {"adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD, "adamw": keras.optimizers.AdamW}
    if optimizer not in optimizers:
        raise ValueError(f"optimizer must be one of {sorted(optimizers)}, got {optimizer!r}")
    lr = float(learning_rate) if isinstance(learning_rate, float | int) else learning_rate
    opt = optimizers[optimizer](learning_rate=lr)
    distiller.compile(optimizer=opt, objective=objective)
    curve: list[tuple[int, float]] = []
    best = {"score": -np.inf, "weights": None, "epoch": -1}

    def recalibrate() -> None:
        if bn_batches:
            recalibrate_batch_norm(student, train, max_batches=bn_batches)

    def check(epoch: int) -> None:
        if validation is None:
            return
        recalibrate()
        score = float(validation(student))
        curve.append((int(opt.iterations.numpy()), score))
        if score > best["score"]:
            best.update(score=score, weights=student.get_weights(), epoch=epoch)

    class _Curve(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if curve_every and int(opt.iterations.numpy()) % curve_every == 0:
                check(self._epoch)

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch

        def on_epoch_end(self, epoch, logs=None):
            if not curve_every:
                check(epoch)

    start = time.perf_counter()
    history = distiller.fit(train, epochs=epochs, verbose=verbose, callbacks=[_Curve()])
    losses = [float(v) for v in history.history.get("loss", [])]
    if any(not math.isfinite(v) for v in losses):
        raise FloatingPointError(f"stage {get_objective(objective).name}: non-finite loss {losses}")
    if best["weights"] is not None:
        student.set_weights(best["weights"])  # their statistics were recalibrated when they were scored
    else:
        recalibrate()
    return {
        "objective": get_objective(objective).get_config() | {"name": get_objective(objective).name},
        "epochs": epochs,
        "loss": losses,
        "curve": curve,
        "best_score": None if best["weights"] is None else best["score"],
        "best_epoch": None if best["weights"] is None else best["epoch"],
        "seconds": time.perf_counter() - start,
    }


def predict_logits(
    model: keras.Model, records: Records, config: PreprocessConfig, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """The model's logits over ``records`` (unaugmented), and the record positions they belong to (a file
    that fails to decode is dropped by the pipeline and reported in ``records.report``)."""
    data = pipeline.make_dataset(records, config, batch_size, shuffle=False, cache=False)
    logits, index = [], []
    for batch in data:
        logits.append(np.asarray(model(batch[schema.IMAGE], training=False)))
        index.append(batch[schema.INDEX].numpy())
    if not logits:
        raise ValueError(f"no image of {len(records)} records could be read: see records.report")
    return np.concatenate(logits).astype("float32"), np.concatenate(index)


def probabilities(logits: np.ndarray, records: Records) -> np.ndarray:
    """Class (softmax) or label (sigmoid) probabilities from logits."""
    return metric_fns.probabilities_from_logits(logits, multilabel=records.task == "multilabel")


def evaluate(
    model: keras.Model,
    records: Records,
    config: PreprocessConfig,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
) -> dict:
    """Accuracy, AUC (and more) of ``model`` on ``records`` with patient-clustered bootstrap CIs.

    Multi-label: the per-label AUC where a label has both classes (uncertain ``-1`` labels left out) and their
    mean as ``"auc"``.
    """
    logits, index = predict_logits(model, records, config, batch_size)
    probs = probabilities(logits, records)
    y = records.labels[index]
    clusters = records.patients[index]
    task = eval_task(records)
    if task != "multilabel":
        return evaluate_predictions(y, probs, clusters, task=task, n_boot=n_boot, seed=seed)
    per_label = {}
    for j, name in enumerate(records.class_names):
        known = y[:, j] >= 0
        if len(np.unique(y[known, j])) == 2:
            per_label[name] = float(metric_fns.binary_auc(y[known, j].astype(int), probs[known, j]))
    return {"n": int(len(y)), "task": task, "auc_per_label": per_label,
            "auc": {"estimate": float(np.mean(list(per_label.values()))) if per_label else float("nan")}}


def estimate(metrics: dict, name: str) -> float:
    """The point estimate of ``metrics[name]`` (a CI dict or a number)."""
    value = metrics.get(name)
    if isinstance(value, dict):
        return float(value["estimate"])
    return float("nan") if value is None else float(value)


def score_fn(records: Records, config: PreprocessConfig, metric: str = "auc") -> Callable[[keras.Model], float]:
    """A validation function for :func:`train_stage` (no bootstrap)."""

    def score(model: keras.Model) -> float:
        value = estimate(evaluate(model, records, config, n_boot=0), metric)
        return value if math.isfinite(value) else -1.0

    return score


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
