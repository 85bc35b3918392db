"""Data and stages of study 003: SimCLR, teacher fine-tune, pseudo-labels, student, student fine-tune, baselines,
evaluation and t-SNE.

Each stage function takes the :class:`~kd_keras.runner.RunContext` and returns the JSON-ready result that the
runner records. Every training goes through :func:`kd_keras.engine.train` with ``directory=ctx.run_dir(stage)``
(a killed training resumes from its checkpoint) and saves its model as ``models/<name>.keras``, which later
stages load; each model is built right after seeding with ``config.seed``, so a resumed run ends as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kd_keras.data.records import Records
from kd_keras.runner import RunContext
from kd_keras.studies.simclr_config import SimCLRConfig, SimCLRError

if TYPE_CHECKING:
    from kd_keras.studies.data_checks import DataChecks

__all__ = ["SimCLRData", "baseline_stage", "evaluation_stage", "labeled_everything", "load_records", "plot_tsne",
           "prepare_data", "pseudo_label_stage", "simclr_stage", "student_finetune_stage", "student_pseudo_stage",
           "teacher_finetune_stage", "tsne_stage"]

TEST = "test"


# ------------------------------------------------------------------------------------------------ data


@dataclass
class SimCLRData:
    """The run's data: the labeled fraction, the pool (its labels only score the pseudo-labels) and test sets."""

    records: Records
    labeled: Records
    pool: Records
    tests: dict[str, Records] = field(default_factory=dict)
    checks: DataChecks | None = None

    def check_summary(self) -> dict[str, Any]:
        """What the checks before training did and every file they left out (``results.json``'s ``data``)."""
        return self.checks.summary() if self.checks is not None else {}

    def split(self) -> dict[str, int]:
        """Sizes: ``{"labeled", "pool", <test set>: ...}``."""
        return {"labeled": len(self.labeled), "pool": len(self.pool), **{k: len(v) for k, v in self.tests.items()}}


def load_records(layout: str, path: str, image_dir: str | None = None, task: str = "auto",
                 checks: DataChecks | None = None, *, abnormal_classes: tuple[str, ...] = (),
                 ignored_classes: tuple[str, ...] = ()) -> Records:
    """A labeled source as a binary task (DR grades become referable DR).

    Args:
        layout: one of :data:`~kd_keras.studies.simclr_config.LAYOUTS`.
        path: the folder, CSV or ``.npz`` file.
        image_dir: where a CSV's images are (default: next to it).
        task: ``"auto"`` (referable DR for eyepacs/messidor, the classes as given otherwise) or a task name of
            :func:`kd_keras.data.tasks.apply_task`.
        checks: the run's data checks (:mod:`kd_keras.studies.data_checks`), applied before the task: class
            folders (with ``task="normal_vs_abnormal"``, each NORMAL, one of ``abnormal_classes`` or one of
            ``ignored_classes``; otherwise ``ignored_classes`` left out), every file, images under two labels.

    Example:
        >>> records = load_records("eyepacs", "trainLabels.csv", "train")
    """
    from kd_keras.data import sources, tasks

    try:
        records = sources.load_labeled(layout, path, image_dir=image_dir, task=None)
    except (FileNotFoundError, KeyError, ValueError) as error:
        raise SimCLRError(f"--data {path} ({layout}): {str(error).strip() or type(error).__name__}") from None
    if checks is not None:
        from kd_keras.studies.data_checks import checked_labeled

        records = checked_labeled(records, checks, path, layout=layout, task=task,
                                  abnormal_classes=abnormal_classes, ignored_classes=ignored_classes)
    if task == "auto":
        task = "referable_dr" if layout in ("eyepacs", "messidor") else ""
    if layout == "folders" and not task and len(records.class_names) != 2:  # class folders are not DR grades
        raise SimCLRError(f"--data {path}: study 003 needs a binary task, got the class folders "
                          f"{list(records.class_names)}; leave folders out with --ignored-classes, or pass --task "
                          "normal_vs_abnormal")
    try:
        if task:
            records = tasks.apply_task(records, task)
        if records.task != "binary" and len(records.class_names) != 2:
            records = tasks.referable_dr(records)  # DR grades (or another grading) -> referable or not
    except (KeyError, ValueError) as error:
        raise SimCLRError(f"--data {path}: task {task or 'auto'}: {str(error).strip()}") from None
    if len(records.class_names) != 2:
        hint = "; leave folders out with --ignored-classes" if layout == "folders" else ""
        raise SimCLRError(f"--data {path}: study 003 needs a binary task, got classes {list(records.class_names)}"
                          f"{hint}")
    return records


def prepare_data(config: SimCLRConfig, out: Path, say: Callable[[str], None] = print) -> SimCLRData:
    """Load (or generate) the records and split them by patient: test, labeled fraction, pool.

    Args:
        config: the run's settings (data source, synthetic sizes, fractions, seed).
        out: the run's folder; generated data goes to ``out/data/fundus`` (kept by ``--overwrite``).
        say: where the one-line progress messages go.

    Returns:
        :class:`SimCLRData`; the pool's ``labeled`` flags are all false (its labels only score pseudo-labels).
        With generated data and ``synthetic_test_patients``, the test set also holds that many test-only
        patients (:func:`kd_keras.data.synthetic_fundus.test_only_fundus`); the training split is unchanged.

    Example:
        >>> data = prepare_data(resolve_config(SimCLRConfig, PRESETS, preset="smoke"), Path("runs/simclr"))
        >>> data.split()  # {'labeled': 4, 'pool': 12, 'test': 8}
    """
    from kd_keras.data.splits import split_by_patient
    from kd_keras.studies.data_checks import DataChecks

    checks = DataChecks.of(config, say, SimCLRError)
    classes = {"abnormal_classes": config.abnormal_classes, "ignored_classes": config.ignored_classes}
    test_only = None
    if config.data is None:
        from kd_keras.data import sources, tasks
        from kd_keras.data.synthetic_fundus import SyntheticFundusConfig, generate_synthetic_fundus, test_only_fundus

        generator = SyntheticFundusConfig(patients=config.synthetic_patients, image_size=max(64, config.image_size),
                                          seed=config.seed, difficulty=config.synthetic_difficulty)
        root = generate_synthetic_fundus(out / "data" / "fundus", generator)
        records = tasks.referable_dr(sources.eyepacs(root / "trainLabels.csv", root / "train"))
        records = checks.two_labels(checks.files(records), str(root))
        if config.synthetic_test_patients:  # more test images, no more training labels
            test_only = tasks.referable_dr(test_only_fundus(out / "data" / "fundus_test", dataclasses.replace(
                generator, patients=config.synthetic_test_patients)))
            test_only = checks.files(test_only)
    else:
        records = load_records(config.layout, config.data, config.image_dir, config.task, checks, **classes)
    extra = {}
    for spec in config.extra_tests:
        path, _, image_dir = spec.partition(":")
        layout = "folders" if Path(path).is_dir() else "messidor"
        name = Path(path).stem
        if name in extra or name == TEST:  # never replace the held-out test set or another extra one
            name = f"{Path(path).resolve().parent.name}_{name}"
        extra[name] = load_records(layout, path, image_dir or None, checks=checks, **classes)
    say(f"{len(records)} images {records.class_counts()}")
    f, lf = config.test_fraction, config.labeled_fraction
    parts = split_by_patient(records, fractions=(1 - f, f), names=("train", "test"), seed=config.seed)
    inner = split_by_patient(parts["train"], fractions=(lf, 1 - lf), names=("labeled", "pool"), seed=config.seed)
    pool = dataclasses.replace(inner["pool"], labeled=np.zeros(len(inner["pool"]), bool))  # labels never used
    test = parts["test"] if test_only is None else Records.concat(parts["test"], test_only)
    tests = {TEST: test, **extra}
    # No held-out image is trained on: an extra test image that is a labeled or pool image is refused; a pool
    # image that is also a test image is refused or dropped (held_out_overlap).
    keep = checks.held_out({"pool": pool, "labeled": inner["labeled"],
                            **{f"test set {name!r}": test for name, test in tests.items()}},
                           tests=[f"test set {name!r}" for name in tests], pool_option="--data")
    if keep is not None and not keep.all():
        pool = pool.subset(keep)
    checks.finish()
    return SimCLRData(records=records, labeled=inner["labeled"], pool=pool, tests=tests, checks=checks)


# ------------------------------------------------------------------------------------------------ helpers


def seed_model(ctx: RunContext) -> None:
    """Seed before building a model: once with deterministic ops, then the global seed again for each model."""
    import keras

    from kd_keras.engine import seed_everything

    if not ctx.state.get("seeded"):
        seed_everything(ctx.config.seed, deterministic=ctx.config.deterministic)
        ctx.state["seeded"] = True
    keras.utils.set_random_seed(int(ctx.config.seed))


def _preprocess(config: SimCLRConfig):
    from kd_keras.data.preprocess import PreprocessConfig

    return PreprocessConfig(image_size=(config.image_size, config.image_size), channels=config.channels,
                            fundus_crop=config.fundus_crop)


def _weak(config: SimCLRConfig, offset: int = 0):
    from kd_keras.data.augment import build_augmenter

    return build_augmenter(flip="horizontal", rotation_degrees=0.0, vertical_shift=0.0, brightness=0.1,
                           contrast=0.1, seed=config.seed + offset)


def _strong(config: SimCLRConfig, offset: int, rotation_degrees: float = 0.0):
    from kd_keras.data.augment import build_simclr_augmenter

    augmenter = build_simclr_augmenter(channels=config.channels, image_size=config.image_size,
                                       seed=config.seed + offset)
    if rotation_degrees <= 0:
        return augmenter
    import keras

    # 003's SimCLR views include rotations (its Fig. 2), which SimCLR's own recipe does not.
    rotate = keras.layers.RandomRotation(rotation_degrees / 360.0, fill_mode="constant", seed=config.seed + offset)
    return keras.Sequential([rotate, augmenter], name="rotated_simclr_augmenter")


def _adamw(weight_decay: float):
    """Adam with decoupled weight decay (003's SimCLR stage) as a function ``learning_rate -> optimizer``."""
    import keras

    def make(learning_rate):
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)

    make.__name__ = f"adamw(weight_decay={weight_decay:g})"
    return make


def _build(name: str, weights: str | None, config: SimCLRConfig):
    from kd_keras.models import build_model

    return build_model(name, (config.image_size, config.image_size, config.channels), num_classes=2,
                       weights=weights)


def _train(ctx: RunContext, stage: str, model_name: str, model, make_stream, *, steps: int | None, epochs: int,
           learning_rate: float, objective: str | dict = "hard_label", optimizer: Any = "adam") -> dict[str, Any]:
    """One resumable training in ``ctx.run_dir(stage)``; saves ``models/<model_name>.keras``; returns the recorded
    summary."""
    import keras

    from kd_keras.engine import get_objective, train

    ctx.say(f"{stage}: {epochs} epochs, lr {learning_rate:g}, {getattr(optimizer, '__name__', optimizer)}")
    result = train(model, make_stream, epochs=epochs, steps_per_epoch=steps, learning_rate=learning_rate,
                   optimizer=optimizer, objective=objective, directory=ctx.run_dir(stage), metrics=None,
                   bn_batches=ctx.config.bn_recalibration_batches)
    path = ctx.path("models", f"{model_name}.keras")
    result.model.save(path)
    keras.backend.clear_session(free_memory=True)
    name = get_objective(objective).name
    return {"objective": get_objective(objective).get_config() | {"name": name}, "epochs": epochs,
            "loss": [float(v) for v in result.losses], "path": str(path),
            "seconds": round(result.seconds, 2)}


def _stream(ctx: RunContext, records: Records, augmenter: Callable[[], Any], *, labels=None,
            view2: Callable[[], Any] | None = None, batch_size: int | None = None):
    """A function building the training stream over ``records`` (fresh augmenters each time) and its steps."""
    from kd_keras.engine import train_stream

    config = ctx.config
    batch_size = batch_size or config.batch_size

    def make():
        return train_stream(records, _preprocess(config), batch_size, augmenter=augmenter(),
                            view2_augmenter=view2() if view2 else None, seed=config.seed, labels=labels)

    return make, max(1, math.ceil(len(records) / batch_size))


def _load(ctx: RunContext, stage: str):
    from kd_keras.models import load_model

    return load_model(ctx.outputs[stage]["path"])


# ------------------------------------------------------------------------------------------------ stages


def simclr_stage(ctx: RunContext) -> dict[str, Any]:
    """1. SimCLR on every training image (labels unused): the teacher's encoder."""
    from kd_keras.data import pipeline

    config, data = ctx.config, ctx.data
    seed_model(ctx)
    teacher = _build(config.teacher, config.teacher_weights, config)
    everything = pipeline.mixed_records(data.labeled, data.pool)
    degrees = config.simclr_rotation_degrees
    make, steps = _stream(ctx, everything, lambda: _strong(config, 1, degrees),
                          view2=lambda: _strong(config, 2, degrees), batch_size=config.simclr_batch_size)
    optimizer = _adamw(config.simclr_weight_decay) if config.simclr_weight_decay > 0 else "adam"
    return _train(ctx, "simclr", "teacher_simclr", teacher, make, steps=steps, epochs=config.simclr_epochs,
                  learning_rate=config.simclr_lr, optimizer=optimizer,
                  objective={"name": "simclr", "temperature": config.simclr_temperature})


def teacher_finetune_stage(ctx: RunContext) -> dict[str, Any]:
    """2. The SimCLR teacher fine-tuned on the labeled fraction."""
    config = ctx.config
    seed_model(ctx)
    make, steps = _stream(ctx, ctx.data.labeled, lambda: _weak(config))
    return _train(ctx, "teacher_finetune", "teacher", _load(ctx, "simclr"), make, steps=steps,
                  epochs=config.finetune_epochs, learning_rate=config.finetune_lr)


def _pseudo_labels(ctx: RunContext):
    """The pool's pseudo-labels at the configured operating point (a probability, or a rule computed from the
    teacher's cached outputs: :func:`kd_keras.studies.simclr_semi.operating_point`)."""
    from kd_keras.engine import pseudo_label_pool
    from kd_keras.studies.simclr_semi import operating_point

    data, rule = ctx.data, ctx.config.pseudo_label_threshold

    def label(threshold: float):
        return pseudo_label_pool(ctx.outputs["teacher_finetune"]["path"], data.labeled, data.pool,
                                 _preprocess(ctx.config), ctx.out / "teacher_cache", batch_size=64,
                                 threshold=threshold)

    labels = label(0.5)  # runs the teacher once; the cache is read back for any other threshold
    if isinstance(rule, str):
        positive, n = _positive_probability(labels), labels.num_labeled
        labels = label(operating_point(rule, positive[:n], data.labeled.labels, positive[n:]))
    return labels


def _positive_probability(labels) -> np.ndarray:
    """The teacher's positive-class probability on ``labeled + pool`` (the cache's rows), from its cached logits."""
    from kd_keras.evaluation.metrics import probabilities_from_logits

    cache = labels.cache
    probabilities = probabilities_from_logits(np.asarray(cache.logits[np.arange(cache.num_examples)], np.float32))
    return probabilities if probabilities.ndim == 1 else probabilities[:, 1]


def pseudo_label_stage(ctx: RunContext) -> dict[str, Any]:
    """3a. The teacher labels the pool (positive-class probability above the operating point), cached on disk;
    the pseudo-labels' agreement with the pool's hidden labels is recorded where the pool has them, and at the
    paper's 0.5 (``at_0.5``) from the same teacher outputs."""
    from kd_keras.studies.simclr_semi import pseudo_label_agreement

    labels = _pseudo_labels(ctx)
    pool = ctx.data.pool
    summary = labels.summary(pool.class_names)
    summary.update(positive=int(labels.pool_labels.sum()), total=int(len(labels.pool_labels)),
                   agreement_with_hidden_labels=float(np.mean(labels.pool_labels == pool.labels)),
                   operating_point=ctx.config.pseudo_label_threshold, threshold=float(labels.threshold),
                   labeled_prevalence=float(np.mean(ctx.data.labeled.labels)))
    summary["at_0.5"] = pseudo_label_agreement(_positive_probability(labels)[labels.num_labeled:], pool.labels, 0.5)
    half = summary["at_0.5"]
    ctx.say(f"pseudo-labels ({ctx.config.pseudo_label_threshold}: threshold {labels.threshold:.3f}): "
            f"{summary['positive']} of {summary['total']} positive; "
            f"{100 * summary['agreement_with_hidden_labels']:.1f}% agree with the hidden labels (at 0.5: "
            f"{half['positive']} positive, {100 * half['agreement_with_hidden_labels']:.1f}%)")
    return summary


def student_pseudo_stage(ctx: RunContext) -> dict[str, Any]:
    """3b. The student trained on the pool with the teacher's pseudo-labels (SGD)."""
    config = ctx.config
    labels = _pseudo_labels(ctx).pool_labels  # read back from the teacher cache
    seed_model(ctx)
    student = _build(config.student, config.student_weights, config)
    make, steps = _stream(ctx, ctx.data.pool, lambda: _weak(config), labels=labels)
    return _train(ctx, "student_pseudo", "student_pseudo", student, make, steps=steps,
                  epochs=config.student_epochs, learning_rate=config.student_lr, optimizer="sgd")


def student_finetune_stage(ctx: RunContext) -> dict[str, Any]:
    """4. The student fine-tuned on the labeled fraction (SGD)."""
    config = ctx.config
    seed_model(ctx)
    make, steps = _stream(ctx, ctx.data.labeled, lambda: _weak(config))
    return _train(ctx, "student_finetune", "student", _load(ctx, "student_pseudo"), make, steps=steps,
                  epochs=config.student_finetune_epochs, learning_rate=config.student_lr, optimizer="sgd")


def labeled_everything(data: SimCLRData) -> Records:
    """Every training image with its true label: the labeled fraction and the pool (the 100% reference)."""
    pool = dataclasses.replace(data.pool, labeled=np.ones(len(data.pool), bool))
    return Records.concat(data.labeled, pool)


def baseline_stage(ctx: RunContext, name: str) -> dict[str, Any]:
    """A baseline: supervised (``supervised_model``, default the teacher's architecture) on the labeled fraction
    or on every training label (``supervised_full``); FixMatch / MixMatch (the teacher's architecture) with
    separate batches of ``batch_size`` labeled and ``ratio x batch_size`` pool images
    (:func:`kd_keras.data.pipeline.make_two_stream_dataset`), one epoch being one pass over the pool."""
    from kd_keras.data import pipeline
    from kd_keras.studies.simclr_semi import SEMI_SUPERVISED, baseline_epochs, baseline_objective, baseline_ratio

    config, data = ctx.config, ctx.data
    seed_model(ctx)
    objective = baseline_objective(config, name)
    if name not in SEMI_SUPERVISED:
        model = _build(config.supervised_model or config.teacher, config.teacher_weights, config)
        records = data.labeled if name == "supervised" else labeled_everything(data)
        make, steps = _stream(ctx, records, lambda: _weak(config))
    else:
        model = _build(config.teacher, config.teacher_weights, config)
        ratio = baseline_ratio(config, name)
        # FixMatch: a weak and a strong view; MixMatch: K = 2 weak augmentations.
        view2 = (lambda: _strong(config, 1)) if name == "fixmatch" else (lambda: _weak(config, 1))

        def make():
            return pipeline.make_two_stream_dataset(data.labeled, data.pool, _preprocess(config), config.batch_size,
                                                    unlabeled_ratio=ratio, seed=config.seed,
                                                    augmenter=_weak(config), view2_augmenter=view2())

        steps = max(math.ceil(len(data.labeled) / config.batch_size),
                    pipeline.two_stream_steps(len(data.pool), config.batch_size, ratio))
        total = steps * config.baseline_epochs
        if name == "mixmatch" and total < config.mixmatch_rampup_steps:
            ctx.say(f"mixmatch: {total} steps, fewer than its lambda_u ramp-up of {config.mixmatch_rampup_steps}: "
                    f"lambda_u ends at {config.mixmatch_lambda_u * total / config.mixmatch_rampup_steps:.3g}")
    return _train(ctx, f"baseline-{name}", name, model, make, steps=steps, epochs=baseline_epochs(config, name),
                  learning_rate=config.baseline_lr, objective=objective)


def model_stages(config: SimCLRConfig) -> dict[str, str]:
    """Evaluated method -> the stage whose model it is."""
    return {**{b: f"baseline-{b}" for b in config.baselines}, "teacher": "teacher_finetune",
            "student": "student_finetune"}


def evaluation_stage(ctx: RunContext) -> dict[str, Any]:
    """Every model on every test set: AUC and accuracy with patient-clustered bootstrap CIs."""
    import keras

    from kd_keras.engine import evaluate_model

    config = ctx.config
    pre = _preprocess(config)
    result = {}
    for method, stage in model_stages(config).items():
        model = _load(ctx, stage)
        result[method] = {t: evaluate_model(model, r, pre, n_boot=config.n_boot, seed=config.seed)
                          for t, r in ctx.data.tests.items()}
        keras.backend.clear_session(free_memory=True)
    return result


def tsne_stage(ctx: RunContext) -> dict[str, Any]:
    """Fig. 4: the t-SNE of the student's and the teacher's embeddings on the test set."""
    models = {"teacher": _load(ctx, "teacher_finetune"), "student": _load(ctx, "student_finetune")}
    path = plot_tsne(models, ctx.data.tests[TEST], ctx.config, ctx.path("tsne.png"))
    return {"path": str(path)}


def plot_tsne(models: dict[str, Any], records: Records, config: SimCLRConfig, path: Path) -> Path:
    """t-SNE of the pooled ``features`` of each model on ``records``, coloured by the label."""
    import keras
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    from kd_keras.engine import predict
    from kd_keras.models import with_taps

    rng = np.random.default_rng(config.seed)
    keep = np.sort(rng.permutation(len(records))[: config.tsne_points])
    subset = records.subset(keep)
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.5), squeeze=False)
    for ax, (name, model) in zip(axes[0], models.items(), strict=True):
        tapped = with_taps(model, ["features"])
        out = predict(keras.Model(tapped.input, tapped.output[1]), subset, _preprocess(config))
        feats = out.logits
        perplexity = float(min(30, max(2, (len(feats) - 1) // 3)))
        emb = TSNE(n_components=2, perplexity=perplexity, random_state=config.seed, init="pca").fit_transform(feats)
        labels = subset.labels[out.indices]
        for value, colour in ((0, "tab:blue"), (1, "tab:red")):
            ax.scatter(*emb[labels == value].T, s=8, c=colour, label=subset.class_names[value])
        ax.set_title(f"t-SNE of {name} embeddings")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
