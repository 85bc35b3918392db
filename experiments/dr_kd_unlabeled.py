"""Study 000 as a command: VGG16 teacher, Simple10 / VGG/2 / VGG/4 students, Base / +KD / +UL / +KD+UL,
5-fold patient-level cross-validation, Tables 1 and 2.

Examples::

    # Messidor sheet exported to CSV, random images from a folder of natural photographs
    python experiments/dr_kd_unlabeled.py --layout messidor --data messidor.csv --image-dir messidor/ \
        --pool natural_images/ --out runs/dr_kd
    # EyePACS, referable DR, a smaller size
    python experiments/dr_kd_unlabeled.py --layout eyepacs --data trainLabels.csv --image-dir train/ \
        --task referable_dr --image-size 128 --out runs/dr_kd_eyepacs
    # the embedded demo (synthetic fundus photographs, built-in natural-image pool): minutes on 2 CPU cores
    python experiments/dr_kd_unlabeled.py --demo --out runs/dr_kd_demo

Outputs in ``--out``: ``results.json`` (config, seed, package versions, per-fold metrics and stage logs),
``report.md`` (the tables), ``methods.png``, ``models/fold<k>/*.keras``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd_keras.data import sources, tasks  # noqa: E402
from kd_keras.data.natural_images import natural_image_pool  # noqa: E402
from kd_keras.data.synthetic_fundus import SyntheticFundusConfig, generate_synthetic_fundus  # noqa: E402
from kd_keras.studies import common  # noqa: E402
from kd_keras.studies import dr_kd_unlabeled as study  # noqa: E402

# --demo sizes; KD_KERAS_TINY=1 (or --tiny) shrinks them to a CI smoke test.
DEMO = dict(image_size=48, folds=5, max_folds=2, teacher_epochs=3, ul_epochs=2, kd_epochs=2, hard_epochs=4,
            batch_size=16, n_boot=100)
DEMO_DATA = dict(patients=60, pool=300)
TINY = dict(image_size=32, folds=2, max_folds=1, teacher_epochs=1, ul_epochs=1, kd_epochs=1, hard_epochs=1,
            batch_size=16, n_boot=0, students=("simple10",))
TINY_DATA = dict(patients=16, pool=32)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--demo", action="store_true", help="embedded synthetic fundus data and the built-in pool")
    p.add_argument("--tiny", action="store_true", help="with --demo: CI smoke-test sizes (also KD_KERAS_TINY=1)")
    p.add_argument("--layout", choices=common.LAYOUTS, default="folders")
    p.add_argument("--data", help="class folder root, CSV sheet or .npz")
    p.add_argument("--image-dir", help="images of a CSV layout (default: next to the CSV)")
    p.add_argument("--task", default="auto", help="auto | referable_dr | dr_grades | normal_vs_abnormal | multiclass")
    p.add_argument("--pool", help="folder of unlabeled random (natural) images; default: the built-in fallback")
    p.add_argument("--pool-size", type=int, default=20000, help="images of the built-in fallback pool")
    p.add_argument("--limit", type=int, default=0, help="use a random subset of this many labeled images")
    p.add_argument("--out", default="runs/dr_kd_unlabeled")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--no-fundus-crop", action="store_true", help="not fundus photographs (e.g. chest X-rays)")
    p.add_argument("--teacher-weights", default="imagenet", help="imagenet | none | path of a weights file")
    fields = {f.name: f for f in dataclasses.fields(study.DRKDConfig)}
    for name in ("image_size", "folds", "max_folds", "teacher_epochs", "teacher_lr", "ul_epochs", "kd_epochs",
                 "hard_epochs", "student_lr", "temperature", "batch_size", "dropout", "n_boot", "seed"):
        kind = float if isinstance(fields[name].default, float) else int
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    p.add_argument("--students", nargs="+", default=None)
    p.add_argument("--variants", nargs="+", default=None, choices=list(study.VARIANTS))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tiny = args.tiny or os.environ.get("KD_KERAS_TINY") == "1"
    out = Path(args.out)
    overrides = {}
    if args.demo:
        overrides.update(TINY if tiny else DEMO)
        overrides["teacher_weights"] = None  # offline demo: no download
    for name in ("image_size", "folds", "max_folds", "teacher_epochs", "teacher_lr", "ul_epochs", "kd_epochs",
                 "hard_epochs", "student_lr", "temperature", "batch_size", "dropout", "n_boot", "seed"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.students:
        overrides["students"] = tuple(args.students)
    if args.variants:
        overrides["variants"] = tuple(args.variants)
    if not args.demo:
        weights = args.teacher_weights
        overrides["teacher_weights"] = None if weights.lower() == "none" else weights
        overrides["channels"] = args.channels
        overrides["fundus_crop"] = not args.no_fundus_crop
    config = study.DRKDConfig(**overrides)

    if args.demo:
        sizes = TINY_DATA if tiny else DEMO_DATA
        root = generate_synthetic_fundus(
            out / "data" / "fundus",
            SyntheticFundusConfig(patients=sizes["patients"], image_size=max(64, config.image_size), seed=config.seed,
                                  difficulty=0.5),
        )
        labeled = tasks.referable_dr(sources.eyepacs(root / "trainLabels.csv", root / "train"))
        pool_dir = natural_image_pool(out_dir=out / "data" / "natural", n_images=sizes["pool"],
                                      image_size=max(64, config.image_size), seed=config.seed)
    else:
        if not args.data:
            raise ValueError("give --data (and --layout), or --demo")
        labeled = common.load_labeled(args.layout, args.data, image_dir=args.image_dir, task=args.task)
        pool_dir = natural_image_pool(args.pool, out_dir=out / "data" / f"natural_{args.pool_size}_{config.image_size}",
                                      n_images=args.pool_size,
                                      image_size=config.image_size, seed=config.seed)
    if args.limit and args.limit < len(labeled):
        import numpy as np

        keep = np.sort(np.random.default_rng(config.seed).choice(len(labeled), args.limit, replace=False))
        labeled = labeled.subset(keep)
    pool = sources.from_folder(pool_dir)
    print(f"labeled {len(labeled)} ({labeled.class_counts()}), pool {len(pool)}, config {config}", flush=True)

    results = common.start_results("000_dr_kd_unlabeled", dataclasses.asdict(config), config.seed, argv)
    results["data"] = {"labeled": labeled.summary(), "pool": {"root": str(pool_dir), "images": len(pool)},
                       "demo": args.demo, "tiny": tiny}
    results.update(study.run(labeled, pool, config, out))
    results["ordering_accuracy"] = study.ordering(results, config, "accuracy")
    results["ordering_auc"] = study.ordering(results, config, "auc")
    report = study.write_report(results, config, out)
    json_path, md_path = common.finish_outputs(out, results, report)
    print(report)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(common.run_cli(main))
