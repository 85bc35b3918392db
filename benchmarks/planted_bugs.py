"""Planted bugs: each small, plausible bug must turn the tests that cover it red.

For every bug below, a fresh copy of the committed tree (``git archive HEAD``) gets one literal replacement
(``file``, ``old`` text, ``new`` text; the old text must occur exactly once, else the script stops: the code moved
and the bug list needs updating), then only the tests that should catch it run in that copy
(``python -m pytest -q -x <files> -k <expr>``, with ``PYTHONPATH`` and the working directory set to the copy; the
script checks that ``import kd_keras`` resolves to the copy). A bug is caught when pytest fails. First, the
selected tests of each test file set must pass on the unmodified copy (one baseline run each), or nothing is
measured.

Not part of the test suite (it takes several minutes). Usage::

    python benchmarks/planted_bugs.py            # every bug
    python benchmarks/planted_bugs.py mixmatch   # only the bugs whose name contains "mixmatch"

Prints one line per bug and ``N of N planted bugs caught``; exit status 1 when a bug was missed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PlantedBug:
    """One bug: replace ``old`` (exactly one occurrence) by ``new`` in ``file``; ``tests`` and ``select`` (a
    pytest ``-k`` expression) choose the tests that must fail."""

    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    select: str = ""


BUGS = (
    # Models
    PlantedBug(
        "grey ImageNet normalisation replaced by identity",
        "kd_keras/models/layers.py",
        "mean, std = (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)",
        "mean, std = (0.0,), (1.0,)",
        ("tests/test_zoo_values.py",),
        "normalis",
    ),
    PlantedBug(
        "caffe normalisation keeps RGB order (no BGR swap)",
        "kd_keras/models/layers.py",
        "x = x[..., ::-1]  # RGB -> BGR",
        "x = x  # RGB -> BGR",
        ("tests/test_zoo_values.py",),
        "normalis",
    ),
    PlantedBug(
        "MobileNetV2 identity shortcut replaced by a linear layer of the same name and size",
        "kd_keras/models/mobilenetv2.py",
        'y = layers.Add(name=out_name or f"{name}_add")([y, identity])',
        'y = layers.Activation("linear", name=out_name or f"{name}_add")(y)',
        ("tests/test_zoo_values.py",),
        "mobilenetv2",
    ),
    PlantedBug(
        "SqueezeResNet adds the branch to itself instead of the unit input",
        "kd_keras/models/squeezenet.py",
        'return layers.Add(name=output_name or f"{name}_add")([y, x])',
        'return layers.Add(name=output_name or f"{name}_add")([y, y])',
        ("tests/test_zoo_values.py",),
        "squeeze",
    ),
    # Objectives and losses
    PlantedBug(
        "MixMatch lambda' = min(lambda, 1 - lambda) instead of max",
        "kd_keras/engine/objectives_semi_supervised.py",
        "lam = tf.maximum(lam, 1.0 - lam)",
        "lam = tf.minimum(lam, 1.0 - lam)",
        ("tests/test_objectives_distiller.py",),
        "mixmatch",
    ),
    PlantedBug(
        "MixMatch guesses labels in inference mode (BatchNorm moving averages, not the batch's statistics)",
        "kd_keras/engine/objectives_semi_supervised.py",
        "guesses = [tf.stop_gradient(ctx.student(v)) for v in views]",
        "guesses = [tf.stop_gradient(ctx.student(v, training=False)) for v in views]",
        ("tests/test_objectives_distiller.py",),
        "mixmatch",
    ),
    PlantedBug(
        "FixMatch guesses the pseudo-label on the strong view",
        "kd_keras/engine/losses.py",
        "guess = tf.stop_gradient(weak_logits if guess_logits is None else guess_logits)",
        "guess = tf.stop_gradient(strong_logits if guess_logits is None else guess_logits)",
        ("tests/test_objectives_distiller.py",),
        "fixmatch",
    ),
    PlantedBug(
        "soft-target student-teacher weights the hard term instead of the soft one",
        "kd_keras/engine/losses.py",
        "return ce + alpha * kd",
        "return alpha * ce + kd",
        ("tests/test_objectives_distiller.py",),
        "soft_target",
    ),
    PlantedBug(
        "FitNets swaps the hint and CE weights",
        "kd_keras/engine/objectives_transfer.py",
        "self.ce_weight * hard + self.hint_weight * hint, student",
        "self.hint_weight * hard + self.ce_weight * hint, student",
        ("tests/test_objectives_distiller.py",),
        "fitnets",
    ),
    PlantedBug(
        "pseudo-label min_confidence also drops labeled examples",
        "kd_keras/engine/losses.py",
        "per_group = per_group * (mask[..., 0] + (1.0 - mask[..., 0]) * confident)",
        "per_group = per_group * confident",
        ("tests/test_objectives_distiller.py",),
        "noisy_student",
    ),
    PlantedBug(
        "hard-label objective trains on unlabeled examples too",
        "kd_keras/engine/objectives_transfer.py",
        "loss = losses.hard_label_cross_entropy(batch_labels(batch), logits, self.task) * batch_labeled(batch)",
        "loss = losses.hard_label_cross_entropy(batch_labels(batch), logits, self.task)",
        ("tests/test_objectives_distiller.py",),
        "hard_label",
    ),
    # Studies and data
    PlantedBug(
        "study 000's UL stage trains on the labeled set instead of the random-image pool",
        "kd_keras/studies/dr_stages.py",
        "records, preprocess, objective = data.pool, config.preprocess(fundus_crop=False), soft",
        "records, preprocess, objective = train, config.preprocess(fundus_crop=False), soft",
        ("tests/test_study_000.py",),
        "each_substep",
    ),
    PlantedBug(
        "patient split assigns groups by position instead of by patient",
        "kd_keras/data/splits.py",
        "    return part_of_group[inverse]",
        "    return np.resize(part_of_group, len(inverse))",
        ("tests/test_data_splits.py",),
        "",
    ),
    # Evaluation and export
    PlantedBug(
        "clustered_bootstrap ignores the clusters",
        "kd_keras/evaluation/bootstrap.py",
        "_, cluster_index = np.unique(np.asarray(clusters), return_inverse=True)",
        "_, cluster_index = np.unique(np.arange(n), return_inverse=True)",
        ("tests/test_evaluation.py",),
        "exact_enumeration",
    ),
    PlantedBug(
        "export parity scales the error by the sum of the logits (a far looser fp32 gate)",
        "kd_keras/export/parity.py",
        "scale = float(np.max(np.abs(keras_logits)))",
        "scale = float(np.sum(np.abs(keras_logits)))",
        ("tests/test_export.py",),
        "parity_numbers_by_hand or fp32_gate",
    ),
)


def copy_tree(destination: Path) -> None:
    """The committed tree (HEAD) of this repository, extracted into ``destination``; the checkout is untouched."""
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)


def plant(root: Path, bug: PlantedBug) -> None:
    path = root / bug.file
    text = path.read_text()
    found = text.count(bug.old)
    if found != 1:
        raise SystemExit(f"planted_bugs: {bug.name!r}: {bug.file} holds the old text {found} times (need 1): update it")
    path.write_text(text.replace(bug.old, bug.new))


def environment(root: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONDONTWRITEBYTECODE": "1"}
    # The copy lives in a temporary folder: point the tests that read ../shared at this checkout's.
    if "KD_KERAS_SHARED" not in env and (REPO.parent / "shared").is_dir():
        env["KD_KERAS_SHARED"] = str(REPO.parent / "shared")
    return env


def check_import_resolves_to(root: Path) -> None:
    where = subprocess.run(
        [sys.executable, "-c", "import kd_keras; print(kd_keras.__file__)"],
        cwd=root, env=environment(root), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not Path(where).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"planted_bugs: import kd_keras resolves to {where}, not to the copy {root}")


def run_tests(root: Path, tests: tuple[str, ...], select: str) -> tuple[int, str, float]:
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    if select:
        command += ["-k", select]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=root, env=environment(root), capture_output=True, text=True)
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    return done.returncode, summary, time.perf_counter() - start


def main(argv: list[str]) -> int:
    bugs = [b for b in BUGS if not argv or any(a in b.name for a in argv)]
    with tempfile.TemporaryDirectory(prefix="kd_keras_planted_") as temp:
        clean = Path(temp) / "clean"
        clean.mkdir()
        copy_tree(clean)
        check_import_resolves_to(clean)
        for bug in bugs:  # every old text is where it should be, before anything runs
            if (clean / bug.file).read_text().count(bug.old) != 1:
                plant(clean, bug)  # raises with the message
        for tests in sorted({b.tests for b in bugs}):  # one baseline run per test file set, all its selections
            selects = {b.select for b in bugs if b.tests == tests}
            select = "" if "" in selects else " or ".join(f"({s})" for s in sorted(selects))
            code, summary, seconds = run_tests(clean, tests, select)
            print(f"baseline (no bug): {' '.join(tests)}: {summary} [{seconds:.0f} s]", flush=True)
            if code != 0:
                print("planted_bugs: the selected tests fail without a bug; nothing measured")
                return 2
        caught = 0
        for index, bug in enumerate(bugs):
            root = Path(temp) / f"bug{index}"
            root.mkdir()
            copy_tree(root)
            plant(root, bug)
            code, summary, seconds = run_tests(root, bug.tests, bug.select)
            # pytest: 1 = tests failed, 2 = interrupted/collection error (an import-time failure also counts).
            hit = code in (1, 2)
            caught += hit
            where = " ".join(bug.tests) + (f" -k '{bug.select}'" if bug.select else "")
            print(
                f"{'CAUGHT' if hit else 'MISSED'}  {bug.name}  ({bug.file}; {where}: {summary}) [{seconds:.0f} s]",
                flush=True,
            )
    print(f"{caught} of {len(bugs)} planted bugs caught")
    return 0 if caught == len(bugs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
