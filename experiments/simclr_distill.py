"""Study 003 as a command: SimCLR-pretrained ResNet50 teacher fine-tuned on a small labeled fraction, pseudo-labels
on the pool, a student trained on them and fine-tuned; supervised / FixMatch / MixMatch baselines; AUC with CIs
on every test set; t-SNE of the embeddings.

Examples::

    python experiments/simclr_distill.py --layout eyepacs --data trainLabels.csv --image-dir train \
        --extra-test messidor2.csv:messidor2/ --out runs/simclr
    python experiments/simclr_distill.py --layout folders --data chest_xray/train --no-fundus-crop \
        --image-size 128 --labeled-fraction 0.1 --out runs/simclr_cxr
    python experiments/simclr_distill.py --demo --out runs/simclr_demo

Outputs: ``results.json``, ``report.md``, ``tsne.png``, ``models/*.keras``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kd_keras.data import sources, tasks  # noqa: E402
from kd_keras.data.synthetic_fundus import SyntheticFundusConfig, generate_synthetic_fundus  # noqa: E402
from kd_keras.studies import common  # noqa: E402
from kd_keras.studies import simclr_distill as study  # noqa: E402

DEMO = dict(image_size=64, teacher_weights=None, student_weights=None, labeled_fraction=0.2, simclr_epochs=3,
            finetune_epochs=4, student_epochs=3, student_finetune_epochs=3, baseline_epochs=4, batch_size=16,
            simclr_lr=1e-3, finetune_lr=1e-3, student_lr=1e-2, baseline_lr=1e-3, n_boot=100, tsne_points=200)
DEMO_PATIENTS = 60
TINY = dict(image_size=32, teacher_weights=None, student_weights=None, labeled_fraction=0.3, simclr_epochs=1,
            finetune_epochs=1, student_epochs=1, student_finetune_epochs=1, baseline_epochs=1, batch_size=8,
            simclr_lr=1e-3, finetune_lr=1e-3, student_lr=1e-2, baseline_lr=1e-3, n_boot=0, tsne_points=40,
            test_fraction=0.3,
            # CI smoke test only: small zoo networks instead of ResNet50/DenseNet keep it under a minute or two
            # (the protocol and its plumbing are the same; --demo without --tiny uses the paper's architectures).
            teacher="simple10", student="vgg16_d4")
TINY_PATIENTS = 12


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--demo", action="store_true")
    p.add_argument("--tiny", action="store_true", help="with --demo: CI smoke-test sizes (also KD_KERAS_TINY=1)")
    p.add_argument("--layout", choices=common.LAYOUTS, default="folders")
    p.add_argument("--data")
    p.add_argument("--image-dir")
    p.add_argument("--task", default="auto", help="auto (eyepacs/messidor: referable_dr) | any binary task")
    p.add_argument("--extra-test", action="append", default=[],
                   help="another test set: messidor CSV as CSV[:IMAGE_DIR], or a class-folder root")
    p.add_argument("--out", default="runs/simclr_distill")
    p.add_argument("--teacher-weights", default="imagenet")
    p.add_argument("--student-weights", default="imagenet")
    p.add_argument("--student")
    p.add_argument("--baselines", nargs="*", choices=("supervised", "fixmatch", "mixmatch"))
    p.add_argument("--no-fundus-crop", action="store_true")
    fields = {f.name: f for f in dataclasses.fields(study.SimCLRConfig)}
    numeric = [n for n, f in fields.items() if isinstance(f.default, int | float) and not isinstance(f.default, bool)]
    for name in numeric:
        p.add_argument("--" + name.replace("_", "-"), type=type(fields[name].default))
    args = p.parse_args(argv)
    args.numeric = numeric
    return args


def binary(records):
    if records.task == "binary" or len(records.class_names) == 2:
        return records
    return tasks.referable_dr(records)


def main(argv=None) -> int:
    args = parse_args(argv)
    tiny = args.tiny or os.environ.get("KD_KERAS_TINY") == "1"
    out = Path(args.out)
    overrides: dict = dict(TINY if tiny else DEMO) if args.demo else {}
    if not args.demo:
        for name in ("teacher_weights", "student_weights"):
            value = getattr(args, name)
            overrides[name] = None if value.lower() == "none" else value
        overrides["fundus_crop"] = not args.no_fundus_crop
    for name in args.numeric:
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.student:
        overrides["student"] = args.student
    if args.baselines is not None:
        overrides["baselines"] = tuple(args.baselines)
    config = study.SimCLRConfig(**overrides)
    extra = {}
    if args.demo:
        root = generate_synthetic_fundus(out / "data" / "fundus", SyntheticFundusConfig(
            patients=TINY_PATIENTS if tiny else DEMO_PATIENTS, image_size=max(64, config.image_size),
            seed=config.seed, difficulty=0.5))
        records = tasks.referable_dr(sources.eyepacs(root / "trainLabels.csv", root / "train"))
    else:
        if not args.data:
            raise ValueError("give --data (and --layout), or --demo")
        task = "referable_dr" if args.task == "auto" and args.layout in ("eyepacs", "messidor") else args.task
        records = binary(common.load_labeled(args.layout, args.data, image_dir=args.image_dir, task=task))
        for spec in args.extra_test:
            path, _, image_dir = spec.partition(":")
            layout = "folders" if Path(path).is_dir() else "messidor"
            extra[Path(path).stem] = binary(common.load_labeled(layout, path, image_dir=image_dir or None,
                                                                task="auto" if layout == "folders" else "referable_dr"))
    if len(records.class_names) != 2:
        raise ValueError(f"study 003 needs a binary task, got classes {records.class_names}")
    print(f"{len(records)} images {records.class_counts()}; config {config}", flush=True)
    results = common.start_results("003_simclr_distill", dataclasses.asdict(config), config.seed, argv)
    results["data"] = {"records": records.summary(), "demo": args.demo, "tiny": tiny}
    results.update(study.run(records, config, out, extra_tests=extra))
    report = study.write_report(results, config, out)
    json_path, md_path = common.finish_outputs(out, results, report)
    print(report)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(common.run_cli(main))
