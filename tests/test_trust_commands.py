"""Trustworthy commands (issue 16): `kd-keras export`, `kd-keras latency` and `kd-keras cache build|merge` on a corpus
of bad input.

Each kind runs ``kd_keras.cli.main([...])`` in this process and asserts exit status 2, exactly one ``error:`` line
on stderr naming the file or option, no traceback, and the speed of a refusal (nothing is exported, timed or
computed first). ``docs/trust.md`` holds the table of kinds, outcomes and times (``python scripts/trust_table.py``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from kd_keras.cli import main

SIZE = 32


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return make_files(tmp_path_factory.mktemp("commands"))


def make_files(root: Path) -> dict[str, Path]:
    """A saved 32x32x1 student, class-folder images, a pool, a garbage model file, an ordinary file, an empty
    folder and a path that cannot be created (read-only)."""
    from kd_keras.models import build_model

    root.mkdir(parents=True, exist_ok=True)
    build_model("mobilenet_wd4", input_shape=(SIZE, SIZE, 1), num_classes=2).save(root / "model.keras")
    for cls in ("NORMAL", "CNV"):
        for i in range(4):
            path = root / "parity" / cls / f"{cls}-{i}-0.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.random.default_rng(i).integers(0, 255, (SIZE, SIZE), dtype=np.uint8))
    (root / "pool").mkdir()
    for i in range(6):
        cv2.imwrite(str(root / "pool" / f"p{i}.png"),
                    np.random.default_rng(100 + i).integers(0, 255, (SIZE, SIZE), dtype=np.uint8))
    for name, content in (("garbage.keras", b"not a zip archive"), ("garbage.tflite", b"0123456789abcdef"),
                          ("garbage.onnx", b"<html>not onnx</html>"), ("empty.keras", b""), ("a_file", b"x")):
        (root / name).write_bytes(content)
    (root / "empty_folder").mkdir()
    return {"root": root, "model": root / "model.keras", "parity": root / "parity", "pool": root / "pool",
            "read_only": _read_only(root)}


def _read_only(root: Path) -> Path | None:
    """A folder path this process cannot create or write into: a chmod-ed folder, or under /sys when root."""
    if os.geteuid() != 0:
        folder = root / "read_only"
        folder.mkdir(mode=0o555)
        return folder / "out"
    probe = Path("/sys/kd-keras-read-only-probe")
    try:
        probe.mkdir()
    except OSError:
        return probe / "out"
    probe.rmdir()
    return None


EXPORT = ["export", "{model}", "--parity-dir", "{parity}"]
LATENCY = ["latency", "mobilenet_wd4", "--teacher", "none", "--image-size", "32", "--channels", "1"]
CACHE = ["cache", "build", "--teacher", "{model}", "--pool", "{pool}", "--image-size", "32", "--channels", "1"]
MERGE = ["cache", "merge", "--teacher", "{model}", "--pool", "{pool}", "--image-size", "32", "--channels", "1"]

# name, argv (formatted with the fixture's paths; "{out}" is a fresh folder per case), words of the error line
CASES = [
    # kd-keras export
    ("export_missing_model", ["export", "{root}/nope.keras", "--parity-dir", "{parity}", "--out", "{out}"],
     ["nope.keras", "no such model file"]),
    ("export_garbage_model", ["export", "{root}/garbage.keras", "--parity-dir", "{parity}", "--out", "{out}"],
     ["garbage.keras", "not a zip archive"]),
    ("export_empty_model_file", ["export", "{root}/empty.keras", "--parity-dir", "{parity}", "--out", "{out}"],
     ["empty.keras", "empty file"]),
    ("export_model_is_a_folder", ["export", "{parity}", "--parity-dir", "{parity}", "--out", "{out}"],
     ["parity", "not a model file"]),
    ("export_tflite_as_source", ["export", "{root}/garbage.tflite", "--parity-dir", "{parity}", "--out", "{out}"],
     ["garbage.tflite", "TFL3"]),
    ("export_unknown_variant", [*EXPORT, "--out", "{out}", "--variants", "tflite_fp64"],
     ["--variants", "tflite_fp64", "tflite_int8"]),
    ("export_out_is_a_file", [*EXPORT, "--out", "{root}/a_file"], ["--out", "a_file", "not a folder"]),
    ("export_out_read_only", [*EXPORT, "--out", "{read_only}"], ["--out", "{read_only}", "cannot"]),
    ("export_missing_parity_dir", ["export", "{model}", "--parity-dir", "{root}/nowhere", "--out", "{out}"],
     ["--parity-dir", "nowhere", "no such folder"]),
    ("export_missing_parity_npz", ["export", "{model}", "--parity-npz", "{root}/x.npz", "--out", "{out}"],
     ["--parity-npz", "x.npz", "no such file"]),
    ("export_no_parity_images", ["export", "{model}", "--out", "{out}"], ["--parity-dir", "--parity-npz",
                                                                           "required"]),
    ("export_empty_parity_dir", ["export", "{model}", "--parity-dir", "{root}/empty_folder", "--out", "{out}"],
     ["empty_folder", "no class folders"]),
    ("export_missing_representative_dir", [*EXPORT, "--out", "{out}", "--variants", "tflite_int8",
                                           "--representative-dir", "{root}/nowhere"],
     ["--representative-dir", "nowhere", "no such folder"]),
    ("export_class_name_without_folder", [*EXPORT, "--out", "{out}", "--class-names", "NORMAL", "DME"],
     ["--class-names", "DME"]),
    ("export_three_class_names_two_logits", ["export", "{model}", "--parity-npz", "{root}/parity.npz", "--out",
                                             "{out}", "--class-names", "A", "B", "C"],
     ["--class-names: 3 names for a model with 2 logits"]),
    ("export_threshold_above_one", [*EXPORT, "--out", "{out}", "--threshold", "1.5"],
     ["--threshold", "must be in [0, 1], got 1.5"]),
    ("export_threshold_not_a_number", [*EXPORT, "--out", "{out}", "--threshold", "high"],
     ["--threshold", "'high'"]),
    ("export_accept_agreement_above_one", [*EXPORT, "--out", "{out}", "--accept-agreement", "2"],
     ["--accept-agreement", "must be in [0, 1]"]),
    ("export_opset_too_old", [*EXPORT, "--out", "{out}", "--opset", "2"], ["--opset", "got 2"]),
    ("export_opset_too_new", [*EXPORT, "--out", "{out}", "--opset", "99"], ["--opset", "[13, 18]", "got 99"]),
    ("export_batch_size_zero", [*EXPORT, "--out", "{out}", "--batch-size", "0"], ["--batch-size", "must be >= 1"]),
    ("export_negative_parity_per_class", [*EXPORT, "--out", "{out}", "--parity-per-class", "-3"],
     ["--parity-per-class", "must be >= 1, got -3"]),
    # kd-keras latency
    ("latency_unknown_runtime", [*LATENCY, "--runtimes", "tensorrt", "--out", "{out}/lat"],
     ["--runtimes", "'tensorrt'"]),
    ("latency_unknown_precision", [*LATENCY, "--precisions", "fp8", "--out", "{out}/lat"],
     ["--precisions", "'fp8'"]),
    ("latency_unknown_model_name", ["latency", "mobilenet_wd9", "--teacher", "none", "--out", "{out}/lat"],
     ["target 'mobilenet_wd9'", "kd-keras zoo"]),
    ("latency_unknown_teacher", [*LATENCY, "--teacher", "resnet9000", "--out", "{out}/lat"],
     ["--teacher 'resnet9000'"]),
    ("latency_missing_model_file", ["latency", "{root}/nope.tflite", "--teacher", "none", "--out", "{out}/lat"],
     ["nope.tflite", "no such model file"]),
    ("latency_garbage_keras_file", ["latency", "{root}/garbage.keras", "--teacher", "none", "--out", "{out}/lat"],
     ["garbage.keras", "not a zip archive"]),
    ("latency_garbage_tflite_file", ["latency", "{root}/garbage.tflite", "--teacher", "none", "--out", "{out}/l"],
     ["garbage.tflite", "not a .tflite file"]),
    ("latency_garbage_onnx_file", ["latency", "{root}/garbage.onnx", "--teacher", "none", "--out", "{out}/lat"],
     ["garbage.onnx", "not an .onnx file"]),
    ("latency_zero_images", [*LATENCY, "--num-images", "0", "--out", "{out}/lat"], ["--num-images", ">= 1"]),
    ("latency_negative_repeats", [*LATENCY, "--repeats", "-1", "--out", "{out}/lat"], ["--repeats", ">= 1"]),
    ("latency_image_too_small", ["latency", "mobilenet_wd4", "--teacher", "none", "--image-size", "8", "--out",
                                 "{out}/lat"], ["--image-size", "must be >= 32, got 8"]),
    ("latency_bad_batch_size", [*LATENCY, "--batch-size", "gpu=4", "--out", "{out}/lat"],
     ["--batch-size gpu=4", "RUNTIME=N"]),
    ("latency_missing_images_dir", [*LATENCY, "--images-dir", "{root}/nowhere", "--out", "{out}/lat"],
     ["--images-dir", "nowhere", "no such folder"]),
    ("latency_out_in_a_file", [*LATENCY, "--out", "{root}/a_file/lat"], ["--out", "a_file"]),
    ("latency_out_read_only", [*LATENCY, "--out", "{read_only}/lat"], ["--out", "cannot"]),
    # kd-keras cache build | merge
    ("cache_missing_teacher", ["cache", "build", "--teacher", "{root}/nope.keras", "--pool", "{pool}",
                               "--image-size", "32", "--out", "{out}"], ["nope.keras", "does not exist"]),
    ("cache_garbage_teacher", ["cache", "build", "--teacher", "{root}/garbage.keras", "--pool", "{pool}",
                               "--image-size", "32", "--out", "{out}"], ["garbage.keras", "cannot load the teacher"]),
    ("cache_missing_pool", [*CACHE[:5], "{root}/nowhere", *CACHE[6:], "--out", "{out}"],
     ["nowhere", "--pool", "no such folder"]),
    ("cache_pool_without_images", [*CACHE[:5], "{root}/empty_folder", *CACHE[6:], "--out", "{out}"],
     ["empty_folder", "no usable image"]),
    ("cache_image_size_not_a_size", [*CACHE[:7], "abc", "--out", "{out}"], ["--image-size", "'abc'"]),
    ("cache_image_size_zero", [*CACHE[:7], "0", "--out", "{out}"], ["--image-size", "must be positive"]),
    ("cache_image_size_not_the_teachers", [*CACHE[:7], "48", *CACHE[8:], "--out", "{out}"],
     ["model.keras", "teacher takes inputs of shape (32, 32, 1)", "(48, 48, 1)"]),
    ("cache_shard_out_of_range", [*CACHE, "--out", "{out}", "--shard", "5/4"], ["shard", "5/4"]),
    ("cache_shard_not_i_of_n", [*CACHE, "--out", "{out}", "--shard", "half"], ["shard", "'half'"]),
    ("cache_batch_size_zero", [*CACHE, "--out", "{out}", "--batch-size", "0"], ["--batch-size", ">= 1"]),
    ("cache_negative_shard_size", [*CACHE, "--out", "{out}", "--shard-size", "-1"], ["--shard-size", ">= 1"]),
    ("cache_out_is_a_file", [*CACHE, "--out", "{root}/a_file"], ["--out", "a_file", "not a folder"]),
    ("cache_out_read_only", [*CACHE, "--out", "{read_only}"], ["--out", "cannot"]),
    ("cache_merge_without_parts", [*MERGE, "--out", "{out}"], ["no parts to merge"]),
    ("cache_merge_missing_parts_folder", [*MERGE, "--out", "{out}", "--parts", "{root}/nowhere"],
     ["nowhere", "--parts", "no such folder"]),
    ("cache_merge_flag_on_build", [*CACHE, "--out", "{out}", "--merge"], ["unrecognized arguments: --merge"]),
    ("cache_unknown_subcommand", ["cache", "rebuild"], ["unknown subcommand 'rebuild'"]),
    ("unknown_command", ["exprt", "{model}"], ["unknown command 'exprt'"]),
]


def run_case(files: dict[str, Path], out: Path, case: tuple, capsys) -> tuple[int, str, float]:
    """Runs one kind; ``(exit status, stderr, seconds)``."""
    name, argv, _ = case
    if "{read_only}" in " ".join(argv) and files["read_only"] is None:
        pytest.skip("no read-only location on this machine")
    if name == "export_three_class_names_two_logits" and not (files["root"] / "parity.npz").exists():
        np.savez(files["root"] / "parity.npz", images=np.zeros((4, SIZE, SIZE, 1), np.float32))
    values = {k: str(v) for k, v in files.items()} | {"out": str(out)}
    argv = [a.format(**values) for a in argv]
    capsys.readouterr()
    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    return code, capsys.readouterr().err, seconds


def check_refusal(files: dict[str, Path], case: tuple, code: int, err: str) -> str:
    """Exit status 2, one ``error:`` line holding the case's words, no traceback; returns the line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert code == 2 and "Traceback" not in err
    values = {k: str(v) for k, v in files.items()}
    for words in case[2]:
        assert words.format(**values) in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_one_line(files, tmp_path, capsys, case):
    code, err, seconds = run_case(files, tmp_path / "out", case, capsys)
    check_refusal(files, case, code, err)
    # Nothing was written: no exported file, no latency table, no cache shard.
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()] if (tmp_path / "out").exists() else []
    assert not written, written
    assert seconds < 5, f"{case[0]} took {seconds:.1f} s"


def test_corpus_has_at_least_thirty_kinds_over_the_three_commands():
    commands = {c[1][0] for c in CASES}
    assert {"export", "latency", "cache"} <= commands
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def test_merging_parts_that_do_not_fit_is_refused(files, tmp_path, capsys):
    """Parts of another cache (other preprocessing) or of another split (2 parts against 3) are never merged
    into a cache: one line naming what does not fit, status 2, and no manifest written."""
    common = ["--teacher", str(files["model"]), "--pool", str(files["pool"]), "--image-size", "32", "--channels",
              "1", "--shard-size", "2", "--batch-size", "2"]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(["cache", "build", *common, "--out", str(a), "--shard", "0/2"]) == 0
    assert main(["cache", "build", *common, "--clahe", "--out", str(b), "--shard", "1/2"]) == 0
    assert main(["cache", "build", *common, "--out", str(c), "--shard", "1/3"]) == 0
    capsys.readouterr()
    for parts, words in ((b, "1/2"), (c, "3")):
        code = main(["cache", "merge", *common[:8], "--out", str(a), "--parts", str(parts)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not list(a.rglob("manifest.json"))


def test_export_refusals_leave_an_existing_export_folder_untouched(files, tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "earlier.tflite").write_bytes(b"an earlier export")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for extra in (["--variants", "tflite_fp64"], ["--threshold", "7"], ["--opset", "1"]):
        assert main(["export", str(files["model"]), "--parity-dir", str(files["parity"]), "--out", str(out),
                     *extra]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    capsys.readouterr()
