"""Study 003: SimCLR self-supervised pretraining + knowledge distillation for referable DR with few labels.

The four stages of its Fig. 1, on a binary task (referable DR, or any binary set):

1. **SimCLR** pretraining of a ResNet50 teacher on every training image without labels (NT-Xent between two
   strong augmentations, projection head; :class:`kd_keras.engine.objectives.SimCLR`).
2. **Teacher fine-tuning** on the small labeled fraction (2% by default, whole patients).
3. **Pseudo-labels**: the teacher labels the unlabeled pool (probability threshold 0.5, i.e. the argmax of the
   two-logit head) and a **student** (DenseNet-161 in the paper; Keras has none: ``densenet121`` by default,
   ``densenet201`` is the closest Keras offers) is trained on them.
4. **Student fine-tuning** on the labeled fraction.

Baselines on the same fraction and pool: supervised (the teacher's architecture trained on the fraction; the
paper's was Inception-V3), FixMatch and MixMatch (:mod:`kd_keras.engine.objectives`). AUC with
patient-clustered 95% CIs on every test set, and a t-SNE of the student's and the teacher's embeddings (Fig. 4).

Example:

```python
from kd_keras.studies import simclr_distill as study

results = study.run(records, study.SimCLRConfig(image_size=299), "runs/simclr", extra_tests={"messidor2": m2})
```
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np

from kd_keras.data import pipeline
from kd_keras.data.augment import build_augmenter, build_simclr_augmenter
from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.data.records import Records
from kd_keras.data.splits import split_by_patient
from kd_keras.engine import seed_everything
from kd_keras.evaluation.report import format_ci, markdown_table
from kd_keras.models import build_model, with_taps
from kd_keras.studies import common

METHODS = {
    "supervised": "Supervised (fraction only)",
    "fixmatch": "FixMatch",
    "mixmatch": "MixMatch",
    "teacher": "SimCLR teacher, fine-tuned",
    "student": "Proposed: SimCLR + KD student",
}


@dataclasses.dataclass
class SimCLRConfig:
    """Settings of study 003's protocol (paper values in brackets).

    Args:
        image_size: [299]. labeled_fraction: of the training patients [0.02]. test_fraction: held-out patients.
        teacher, teacher_weights: [ResNet50]; initialisation before SimCLR (``"imagenet"``, file, ``None``).
        student, student_weights: [DenseNet-161 -> densenet121 here].
        simclr_epochs, simclr_lr, simclr_temperature: [100 epochs, lr 1e-5, batch 64].
        finetune_epochs, finetune_lr: teacher fine-tuning on the fraction.
        student_epochs, student_lr: student on pseudo-labels [200 epochs, SGD 1e-4, batch 32].
        student_finetune_epochs: [100].
        baseline_epochs, baseline_lr: supervised, FixMatch and MixMatch.
        baselines: which baselines to run.
    """

    image_size: int = 299
    channels: int = 3
    labeled_fraction: float = 0.02
    test_fraction: float = 0.2
    teacher: str = "resnet50"
    teacher_weights: str | None = "imagenet"
    student: str = "densenet121"
    student_weights: str | None = "imagenet"
    simclr_epochs: int = 100
    simclr_lr: float = 1e-4
    simclr_temperature: float = 0.1
    finetune_epochs: int = 30
    finetune_lr: float = 1e-4
    student_epochs: int = 50
    student_lr: float = 1e-4
    student_finetune_epochs: int = 30
    baseline_epochs: int = 30
    baseline_lr: float = 1e-4
    baselines: tuple[str, ...] = ("supervised", "fixmatch", "mixmatch")
    batch_size: int = 32
    fundus_crop: bool = True
    n_boot: int = 500
    tsne_points: int = 500
    seed: int = 0

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(image_size=(self.image_size, self.image_size), channels=self.channels,
                                fundus_crop=self.fundus_crop)


def _model(name: str, weights: str | None, config: SimCLRConfig) -> keras.Model:
    return build_model(name, (config.image_size, config.image_size, config.channels), num_classes=2,
                       weights=weights)


def run(records: Records, config: SimCLRConfig, out_dir: str | Path,
        extra_tests: dict[str, Records] | None = None) -> dict:
    """Study 003 end to end: returns the results; saves teacher, student and baselines under ``out_dir/models``."""
    out_dir = Path(out_dir)
    models_dir = out_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    pre = config.preprocess()
    f = config.test_fraction
    parts = split_by_patient(records, fractions=(1 - f, f), names=("train", "test"), seed=config.seed)
    train, test = parts["train"], parts["test"]
    lf = config.labeled_fraction
    labeled, pool = (lambda p: (p["labeled"], p["pool"]))(
        split_by_patient(train, fractions=(lf, 1 - lf), names=("labeled", "pool"), seed=config.seed))
    pool = dataclasses.replace(pool, labeled=np.zeros(len(pool), bool))  # the pool's labels are never used
    tests = {"test": test, **(extra_tests or {})}
    weak = build_augmenter(flip="horizontal", rotation_degrees=0.0, vertical_shift=0.0, brightness=0.1,
                           contrast=0.1, seed=config.seed)
    strong = build_simclr_augmenter(channels=config.channels, image_size=config.image_size, seed=config.seed + 1)
    strong2 = build_simclr_augmenter(channels=config.channels, image_size=config.image_size, seed=config.seed + 2)
    results = {"split": {"labeled": len(labeled), "pool": len(pool), **{k: len(v) for k, v in tests.items()}},
               "stages": {}, "test": {}}
    models = {}

    # 1. SimCLR on every training image (labels unused).
    teacher = _model(config.teacher, config.teacher_weights, config)
    everything = pipeline.mixed_records(labeled, pool)
    views = common.stream(everything, pre, config.batch_size, augmenter=strong, view2_augmenter=strong2,
                          seed=config.seed)
    results["stages"]["simclr"] = common.train_stage(
        teacher, views, objective={"name": "simclr", "temperature": config.simclr_temperature},
        epochs=config.simclr_epochs, learning_rate=config.simclr_lr)
    # 2. Fine-tune on the labeled fraction.
    fraction = common.stream(labeled, pre, config.batch_size, augmenter=weak, seed=config.seed)
    results["stages"]["teacher_finetune"] = common.train_stage(
        teacher, fraction, epochs=config.finetune_epochs, learning_rate=config.finetune_lr)
    models["teacher"] = teacher
    # 3. Pseudo-labels on the pool (threshold 0.5 = argmax of two logits), student trained on them.
    logits, index = common.predict_logits(teacher, pool, pre)
    pseudo = np.zeros(len(pool), dtype=np.int64)
    pseudo[index] = (common.probabilities(logits, pool)[:, 1] >= 0.5).astype(np.int64)
    results["pseudo_labels"] = {"positive": int(pseudo.sum()), "total": int(len(pseudo)),
                                "agreement_with_hidden_labels": float(np.mean(pseudo == pool.labels))}
    student = _model(config.student, config.student_weights, config)
    pseudo_stream = common.stream(pool, pre, config.batch_size, augmenter=weak, seed=config.seed, labels=pseudo)
    results["stages"]["student_pseudo"] = common.train_stage(
        student, pseudo_stream, epochs=config.student_epochs, learning_rate=config.student_lr, optimizer="sgd")
    # 4. Student fine-tuned on the labeled fraction.
    results["stages"]["student_finetune"] = common.train_stage(
        student, fraction, epochs=config.student_finetune_epochs, learning_rate=config.student_lr,
        optimizer="sgd")
    models["student"] = student

    # Baselines on the same fraction (and pool, for the semi-supervised ones).
    for name in config.baselines:
        seed_everything(config.seed)
        model = _model(config.teacher, config.teacher_weights, config)
        if name == "supervised":
            data, objective = fraction, "hard_label"
        else:
            data = pipeline.make_mixed_dataset(labeled, pool, pre, config.batch_size, seed=config.seed,
                                               augmenter=weak, view2_augmenter=strong, cache=False)
            objective = {"name": name}
        results["stages"][name] = common.train_stage(
            model, data, objective=objective, epochs=config.baseline_epochs, learning_rate=config.baseline_lr)
        models[name] = model

    for name, model in models.items():
        model.save(models_dir / f"{name}.keras")
        results["test"][name] = {t: common.evaluate(model, r, pre, n_boot=config.n_boot, seed=config.seed)
                                 for t, r in tests.items()}
    results["tsne"] = str(plot_tsne({"teacher": teacher, "student": student}, test, config,
                                    out_dir / "tsne.png"))
    return results


def plot_tsne(models: dict[str, keras.Model], records: Records, config: SimCLRConfig, path: Path) -> Path:
    """Fig. 4: t-SNE of the pooled ``features`` of each model on ``records``, coloured by the label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(config.seed)
    keep = np.sort(rng.permutation(len(records))[: config.tsne_points])
    subset = records.subset(keep)
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.5), squeeze=False)
    for ax, (name, model) in zip(axes[0], models.items(), strict=True):
        tapped = with_taps(model, ["features"])
        feats, index = common.predict_logits(keras.Model(tapped.input, tapped.output[1]), subset,
                                             config.preprocess())
        perplexity = float(min(30, max(2, (len(feats) - 1) // 3)))
        emb = TSNE(n_components=2, perplexity=perplexity, random_state=config.seed, init="pca").fit_transform(feats)
        labels = subset.labels[index]
        for value, colour in ((0, "tab:blue"), (1, "tab:red")):
            ax.scatter(*emb[labels == value].T, s=8, c=colour, label=subset.class_names[value])
        ax.set_title(f"t-SNE of {name} embeddings")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: dict, config: SimCLRConfig, out_dir: Path) -> str:
    """``report.md``: AUC [95% CI] of every method on every test set, the pseudo-labels, the t-SNE."""
    tests = [t for t in results["split"] if t not in ("labeled", "pool")]
    rows = [[METHODS.get(m, m), *[format_ci(results["test"][m][t]["auc"]) for t in tests]]
            for m in ("supervised", "fixmatch", "mixmatch", "teacher", "student") if m in results["test"]]
    pl = results["pseudo_labels"]
    lines = [
        "# Study 003: SimCLR pretraining + knowledge distillation",
        "",
        f"Labeled fraction {config.labeled_fraction:g} ({results['split']['labeled']} images), pool "
        f"{results['split']['pool']}; {config.image_size} px; teacher {config.teacher} (SimCLR "
        f"{config.simclr_epochs} epochs), student {config.student} (stand-in for DenseNet-161).",
        "",
        "## AUC (%) [95% CI, patient-clustered bootstrap]",
        "",
        markdown_table(["Method", *tests], rows),
        "",
        f"Pseudo-labels: {pl['positive']} of {pl['total']} positive; agreement with the hidden labels "
        f"{100 * pl['agreement_with_hidden_labels']:.1f}%.",
        "",
        "![t-SNE](tsne.png)",
    ]
    return "\n".join(lines) + "\n"
