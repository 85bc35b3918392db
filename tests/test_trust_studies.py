"""Trustworthy runs (issue 16) for the other three studies: `kd-keras run dr`, `simclr` and `attention` on a generated
corpus of bad input, with the main job's checks (kd_keras.studies.data_checks), and the forged JPEG for `run oct`.

Each kind runs ``kd_keras.cli.main(["run", <study>, "--preset", "smoke", ...])`` in this process on class folders
(``data/{NORMAL,CNV}``, 6 patients x 2 images each), a pool folder and a test folder, and its outcome is asserted:
refused (exit status 2, one line naming the file, folder or option) or left out and reported (the run goes on: the
count and list on screen). No case trains: the run stops right after its data is prepared and checked, and each
case is timed (a refusal costs a fraction of a second, not a teacher's training). ``docs/trust.md`` holds the table
of kinds, outcomes and times (``python scripts/trust_table.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_trust import _corpus as good_corpus

from kd_keras.cli import main

SIZE = 40
STOP = "stopped before training (test)"
PATIENTS = 6  # per class of the labeled set
STUDY_ARGS = {
    "oct": ["--data-dir", "{data}", "--unlabeled-dir", "{pool}", "--test-dir", "{test}"],
    "dr": ["--layout", "folders", "--data", "{data}", "--pool", "{pool}"],
    "simclr": ["--layout", "folders", "--data", "{data}"],
    "attention": ["--layout", "folders", "--data", "{data}", "--demo-patients", "0"],
}


def _write(path: Path, seed: int, suffix: str = ".png") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)
    if suffix == ".jpg":  # smooth content: a JPEG of noise is mostly one scan of incompressible data
        pixels = cv2.GaussianBlur(pixels, (7, 7), 2)
    ok, data = cv2.imencode(suffix, pixels)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def make_corpus(root: Path) -> dict[str, Path]:
    """The main job's good corpus (tests/test_trust.py): data/{NORMAL,CNV} (6 patients x 2 images), test/{NORMAL,CNV}
    (3 patients), pool/ (8 images); plus its root."""
    return {**good_corpus(root), "root": root}


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _first(folder: Path) -> Path:
    return sorted(folder.glob("*.png"))[0]


# ---------------------------------------------------------------------------------------------- ways to break it


def _pool_copy(link: str) -> Callable:
    def make(d):
        source, target = _first(d["data"] / "CNV"), d["pool"] / "leak-CNV.png"
        if link == "copy":
            target.write_bytes(source.read_bytes())
        else:
            os.link(source, target)

    return make


def _two_labels(d):
    (d["data"] / "CNV" / "CNV-1199-0.png").write_bytes(_first(d["data"] / "NORMAL").read_bytes())


def _misc_folder(d):
    _write(d["data"] / "misc" / "misc-1300-0.png", 777)


def _truncated(d):
    jpeg = _write(d["data"] / "CNV" / "CNV-1105-9.jpg", 4242, ".jpg")
    _truncate(jpeg, 0.6)
    _truncate(_first(d["pool"]))


def _forged_jpeg(d):
    """A JPEG cut mid-scan and given a new end-of-image marker: every marker check passes; only a decode that
    proves the scan complete finds it."""
    jpeg = _write(d["data"] / "CNV" / "CNV-1106-9.jpg", 4343, ".jpg")
    data = jpeg.read_bytes()
    sos = data.rfind(b"\xff\xda")
    jpeg.write_bytes(data[: sos + (len(data) - sos) // 2] + b"\xff\xd9")


def _forged_png(d):
    """A PNG cut mid-chunk and given a new IEND chunk: the header check walks the chunks and finds it."""
    path = _first(d["data"] / "CNV")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + b"\x00\x00\x00\x00IEND\xaeB`\x82")


def _empty_and_text(d):
    (d["data"] / "NORMAL" / "NORMAL-1000-7.png").write_bytes(b"")
    (d["data"] / "CNV" / "CNV-1100-7.png").write_text("this is text, not a PNG")


def _all_pool_truncated(d):
    for f in d["pool"].iterdir():
        _truncate(f)


def _extra_test_copy_of_data(d):
    import shutil

    shutil.copytree(d["data"], d["root"] / "copy_of_data")


def _sheet_without_columns(d):
    (d["root"] / "sheet.csv").write_text("a,b\n1,2\n")


def _unreadable_npz(d):
    (d["root"] / "x.npz").write_bytes(b"not an npz archive")


def _no_pool_images(d):
    for f in d["pool"].iterdir():
        f.unlink()


# name, study, make, extra options, outcome: ("refused", words of the one error line) or ("left_out", files left
# out, words of the screen output). "{data}", "{pool}", "{test}", "{root}" are the corpus' folders.
CASES = [
    # kd-keras run dr (study 000): labeled class folders and a pool of unlabeled random images
    ("dr_missing_data", "dr", lambda d: None, ["--data", "/nonexistent/data"],
     ("refused", "--data /nonexistent/data", "no such file or folder")),
    ("dr_missing_pool", "dr", lambda d: None, ["--pool", "/nonexistent/pool"],
     ("refused", "--pool /nonexistent/pool", "no such folder")),
    ("dr_pool_is_data_folder", "dr", lambda d: None, ["--pool", "{data}"],
     ("refused", "is the labeled images' folder", "--held-out-overlap drop")),
    ("dr_pool_inside_data_folder", "dr", lambda d: None, ["--pool", "{data}/CNV"],
     ("refused", "is inside the labeled images' folder")),
    ("dr_pool_copy_of_labeled_image", "dr", _pool_copy("copy"), [],
     ("refused", "unlabeled pool: 1 images", "(labeled 1)", "identical bytes", "--held-out-overlap drop")),
    ("dr_pool_hard_link_to_labeled_image", "dr", _pool_copy("hardlink"), [],
     ("refused", "unlabeled pool: 1 images", "same file")),
    ("dr_held_out_overlap_drop", "dr", _pool_copy("copy"), ["--held-out-overlap", "drop"],
     ("left_out", 1, "dropped 1 pool images", "held_out_overlap")),
    ("dr_pool_all_truncated", "dr", _all_pool_truncated, [], ("refused", "pool", "none of the 8 files")),
    ("dr_same_image_two_labels", "dr", _two_labels, [],
     ("refused", "two class folders", "--duplicate-labels keep")),
    ("dr_duplicate_labels_drop", "dr", _two_labels, ["--duplicate-labels", "drop"],
     ("left_out", 2, "under two labels (drop)", "conflicting_labels")),
    ("dr_truncated_jpeg_and_png", "dr", _truncated, [], ("left_out", 2, "truncated JPEG", "truncated PNG")),
    ("dr_forged_jpeg_file_check_decode", "dr", _forged_jpeg, ["--file-check", "decode"],
     ("left_out", 1, "scan data ends before the last block")),
    ("dr_unknown_class_folder_normal_vs_abnormal", "dr", _misc_folder, ["--task", "normal_vs_abnormal"],
     ("refused", "class folder 'misc'", "--abnormal-classes", "--ignored-classes misc")),
    ("dr_ignored_class_folder", "dr", _misc_folder, ["--ignored-classes", "misc"],
     ("left_out", 0, "misc (--ignored-classes): 1 images")),
    ("dr_bad_file_check_option", "dr", lambda d: None, ["--file-check", "full"],
     ("refused", "--file-check must be one of header, decode")),
    ("dr_normal_listed_abnormal", "dr", lambda d: None, ["--abnormal-classes", "NORMAL"],
     ("refused", "--abnormal-classes", "is the --normal-class")),
    ("dr_eyepacs_layout_on_a_folder", "dr", lambda d: None, ["--layout", "eyepacs"],
     ("refused", "/data: cannot read table")),
    ("dr_task_needs_grades", "dr", lambda d: None, ["--task", "dr_grades"],
     ("refused", "--task dr_grades", "integer grades")),
    # kd-keras run simclr (study 003): the pool is the labeled data's unlabeled share; extra test sets
    ("simclr_missing_data", "simclr", lambda d: None, ["--data", "/nonexistent/data"],
     ("refused", "--data /nonexistent/data", "no such file or folder")),
    ("simclr_extra_test_is_data_folder", "simclr", lambda d: None, ["--extra-test", "{data}"],
     ("refused", "test set 'data'", "also training or validation images", "same path", "never be trained on")),
    ("simclr_extra_test_copy_of_data", "simclr", _extra_test_copy_of_data, ["--extra-test", "{root}/copy_of_data"],
     ("refused", "test set 'copy_of_data'", "identical bytes", "never be trained on")),
    ("simclr_third_class_folder", "simclr", _misc_folder, [],
     ("refused", "needs a binary task", "'misc'", "--ignored-classes")),
    ("simclr_ignored_class_folder", "simclr", _misc_folder, ["--ignored-classes", "misc"],
     ("left_out", 0, "misc (--ignored-classes): 1 images")),
    ("simclr_unknown_class_folder_normal_vs_abnormal", "simclr", _misc_folder, ["--task", "normal_vs_abnormal"],
     ("refused", "class folder 'misc'", "--ignored-classes misc")),
    ("simclr_same_image_two_labels", "simclr", _two_labels, [], ("refused", "two class folders")),
    ("simclr_duplicate_labels_keep", "simclr", _two_labels, ["--duplicate-labels", "keep"],
     ("left_out", 0, "under two labels (keep)")),
    ("simclr_empty_and_text_files", "simclr", _empty_and_text, [], ("left_out", 2, "empty_file", "not_image")),
    ("simclr_forged_png", "simclr", _forged_png, [], ("left_out", 1, "truncated PNG (chunk IDAT")),
    ("simclr_bad_duplicate_labels_option", "simclr", lambda d: None, ["--duplicate-labels", "maybe"],
     ("refused", "--duplicate-labels must be one of refuse, keep, drop")),
    ("simclr_csv_without_file_column", "simclr", _sheet_without_columns, ["--layout", "csv", "--data",
                                                                           "{root}/sheet.csv"],
     ("refused", "sheet.csv", "no file column")),
    # kd-keras run attention (study 004): one labeled set split into train / validation / test
    ("attention_missing_data", "attention", lambda d: None, ["--data", "/nonexistent/data"],
     ("refused", "--data /nonexistent/data", "no such file or folder")),
    ("attention_same_image_two_labels", "attention", _two_labels, [], ("refused", "two class folders")),
    ("attention_duplicate_labels_drop", "attention", _two_labels, ["--duplicate-labels", "drop"],
     ("left_out", 2, "conflicting_labels")),
    ("attention_truncated_jpeg", "attention", _truncated, [], ("left_out", 1, "truncated JPEG")),
    ("attention_forged_jpeg_file_check_decode", "attention", _forged_jpeg, ["--file-check", "decode"],
     ("left_out", 1, "scan data ends before the last block")),
    ("attention_forged_jpeg_passes_header_check", "attention", _forged_jpeg, [],
     ("left_out", 0, "25 files checked (header)")),
    ("attention_unknown_class_folder_normal_vs_abnormal", "attention", _misc_folder,
     ["--task", "normal_vs_abnormal"], ("refused", "class folder 'misc'", "--ignored-classes misc")),
    ("attention_ignored_class_folder", "attention", _misc_folder, ["--ignored-classes", "misc"],
     ("left_out", 0, "misc (--ignored-classes): 1 images")),
    ("attention_bad_file_check_option", "attention", lambda d: None, ["--file-check", "fast"],
     ("refused", "--file-check must be one of header, decode")),
    ("attention_unreadable_npz", "attention", _unreadable_npz, ["--layout", "npz", "--data", "{root}/x.npz"],
     ("refused", "x.npz", "not a readable .npz")),
    # kd-keras run oct (study 002, the main job; its other kinds are in tests/test_trust.py)
    ("oct_forged_jpeg_file_check_decode", "oct", _forged_jpeg, ["--file-check", "decode"],
     ("left_out", 1, "scan data ends before the last block")),
    ("oct_forged_png", "oct", _forged_png, [], ("left_out", 1, "truncated PNG (chunk IDAT")),
    ("oct_pool_without_images", "oct", _no_pool_images, [], ("refused", "pool", "no usable image files")),
]


def _stop_before_training(monkeypatch) -> None:
    """Every study stops right after its data is prepared and checked (the runner asks for the stages next)."""
    from kd_keras.runner import RunError
    from kd_keras.studies import attention_transfer, dr_kd_unlabeled, oct_student_teacher, simclr_distill

    def stages(self, ctx):
        raise RunError(STOP)

    for study in (dr_kd_unlabeled.DRKDStudy, simclr_distill.SimCLRStudy, attention_transfer.AttentionStudy,
                  oct_student_teacher.OCTStudy):
        monkeypatch.setattr(study, "stages", stages)


def run_case(tmp_path: Path, case: tuple, capsys) -> tuple[int, str, str, float]:
    """Builds the corpus, breaks it, runs the study; ``(exit status, stdout, stderr, seconds)``."""
    name, study, make, extra, _ = case
    dirs = make_corpus(tmp_path)
    make(dirs)
    values = {k: str(v) for k, v in dirs.items()}
    args = [a.format(**values) for a in STUDY_ARGS[study]]
    extra = [e.format(**values) for e in extra]
    for option in {e for e in extra if e.startswith("--")} & set(args):  # an extra option replaces the default
        at = args.index(option)
        del args[at: at + 2]
    capsys.readouterr()
    start = time.perf_counter()
    code = main(["run", study, "--preset", "smoke", "--no-progress", "--out", str(tmp_path / "out"), *args, *extra])
    seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    return code, captured.out, captured.err, seconds


def check_outcome(case: tuple, code: int, out: str, err: str) -> str:
    """Asserts the case's outcome; returns the error line."""
    outcome = case[4]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert code == 2 and "Traceback" not in err
    if outcome[0] == "refused":
        for words in outcome[1:]:
            assert words in lines[0], lines[0]
        assert STOP not in lines[0]
    else:
        assert lines[0] == f"error: {STOP}", lines[0]  # every check passed: the run went on to its stages
        left_out, *words = outcome[1:]
        assert f"{left_out} files left out" in out, out
        for word in words:
            assert word in out, out
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_corpus(tmp_path, capsys, monkeypatch, case):
    _stop_before_training(monkeypatch)
    code, out, err, seconds = run_case(tmp_path, case, capsys)
    check_outcome(case, code, out, err)
    assert not (tmp_path / "out" / "models").exists()  # nothing trained
    assert seconds < 10, f"{case[0]} took {seconds:.1f} s"


def test_corpus_covers_every_study_with_many_kinds():
    studies = {c[1] for c in CASES}
    assert studies == {"oct", "dr", "simclr", "attention"}
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)
    for study in ("dr", "simclr", "attention"):
        kinds = [c for c in CASES if c[1] == study]
        assert {c[4][0] for c in kinds} == {"refused", "left_out"} and len(kinds) >= 8


# --------------------------------------------------------------------------- what reaches results.json and report.md


def test_dr_left_out_files_reach_the_results_and_the_report(tmp_path):
    """The files the checks left out are in DRData.summary() (results.json's data) and in report.md's section."""
    from kd_keras.config import resolve_config
    from kd_keras.studies.data_checks import data_checks_section
    from kd_keras.studies.dr_config import PRESETS, DRKDConfig
    from kd_keras.studies.dr_data import prepare_data

    dirs = make_corpus(tmp_path)
    _truncated(dirs)
    config = resolve_config(DRKDConfig, PRESETS, preset="smoke", sets=[
        "layout=folders", f"data={dirs['data']}", f"pool={dirs['pool']}"])
    lines: list[str] = []
    data = prepare_data(config, tmp_path / "out", say=lines.append)
    summary = data.summary()
    assert summary["checks"]["left_out"] == 2 and summary["checks"]["left_out_by_kind"] == {"truncated": 2}
    assert summary["checks"]["files_checked"] == 2 * 2 * PATIENTS + 1 + 8
    assert len(data.pool) == 7 and len(data.labeled) == 2 * 2 * PATIENTS
    assert {Path(e["path"]).name for e in summary["skipped_files"]} == {"CNV-1105-9.jpg", "POOL-9000-0.png"}
    section = data_checks_section({"data": summary})
    assert "2 files left out (2 truncated)" in section and "CNV-1105-9.jpg" in section
    assert any("2 files left out" in line for line in lines)


def test_simclr_and_attention_checks_reach_the_results(tmp_path, monkeypatch):
    from kd_keras.config import resolve_config
    from kd_keras.runner import RunContext
    from kd_keras.studies import attention_config, attention_stages, simclr_config, simclr_stages

    dirs = make_corpus(tmp_path)
    _empty_and_text(dirs)
    config = resolve_config(simclr_config.SimCLRConfig, simclr_config.PRESETS, preset="smoke",
                            sets=["layout=folders", f"data={dirs['data']}"])
    data = simclr_stages.prepare_data(config, tmp_path / "simclr", say=lambda line: None)
    summary = data.check_summary()
    assert summary["checks"]["left_out_by_kind"] == {"empty_file": 1, "not_image": 1}
    assert sum(data.split().values()) == 2 * 2 * PATIENTS  # labeled + pool + test: every usable image once
    config = resolve_config(attention_config.ATConfig, attention_config.PRESETS, preset="smoke",
                            sets=["layout=folders", f"data={dirs['data']}", "demo_patients=0"])
    ctx = RunContext(config=config, out=tmp_path / "attention", store=None, say=lambda line: None)
    data = attention_stages.prepare_data(ctx)
    assert data.check_summary()["checks"]["left_out"] == 2
    assert len(data.train) + len(data.val) + len(data.test) == 2 * 2 * PATIENTS


def test_dr_pool_never_holds_a_labeled_image(tmp_path):
    """Copies and hard links of labeled images put in the pool: refused by default; with held_out_overlap=drop,
    none of them is left in the pool (by bytes and by real path) and every other pool image is kept."""
    from kd_keras.config import resolve_config
    from kd_keras.studies.dr_config import PRESETS, DRError, DRKDConfig
    from kd_keras.studies.dr_data import prepare_data

    dirs = make_corpus(tmp_path)
    labeled = sorted((dirs["data"]).rglob("*.png"))
    for i, source in enumerate(labeled[::4]):
        target = dirs["pool"] / f"leak-{i}.png"
        target.write_bytes(source.read_bytes()) if i % 2 else os.link(source, target)
    sets = ["layout=folders", f"data={dirs['data']}", f"pool={dirs['pool']}"]
    with pytest.raises(DRError, match="unlabeled pool: 6 images are also"):
        prepare_data(resolve_config(DRKDConfig, PRESETS, preset="smoke", sets=sets), tmp_path / "a", say=print)
    config = resolve_config(DRKDConfig, PRESETS, preset="smoke", sets=[*sets, "held_out_overlap=drop"])
    data = prepare_data(config, tmp_path / "b", say=lambda line: None)
    assert len(data.pool) == 8
    assert not {Path(p).read_bytes() for p in data.pool.paths} & {p.read_bytes() for p in labeled}
    assert not {os.path.realpath(p) for p in data.pool.paths} & {os.path.realpath(p) for p in labeled}
    assert data.summary()["checks"]["held_out_dropped_from_pool"]["files"] == 6


def test_folder_mistakes_of_dr_are_refused_before_the_output_folder_is_touched(tmp_path, capsys):
    dirs = make_corpus(tmp_path)
    out = tmp_path / "out"
    for pool in ("/nonexistent/pool", str(dirs["data"])):
        code = main(["run", "dr", "--preset", "smoke", "--no-progress", "--layout", "folders", "--data",
                     str(dirs["data"]), "--pool", pool, "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and pool in err[0], err
        assert not out.exists()


# ------------------------------------------------------------------------------------------ the file checks


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_cut_mid_scan_is_found_by_the_decode_check_only_when_cut(tmp_path, progressive):
    """Complete JPEGs (sequential, progressive, restart markers, data after the end marker) pass both checks; a
    JPEG cut anywhere in its scan data passes the header check once given an end marker, and the decode check
    finds it; without the marker the header check finds it."""
    from kd_keras.data.validate import check_file

    rng = np.random.default_rng(3)
    pixels = cv2.GaussianBlur(rng.integers(0, 255, (96, 120, 3), dtype=np.uint8), (9, 9), 3)
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if progressive else [cv2.IMWRITE_JPEG_RST_INTERVAL, 4]
    data = cv2.imencode(".jpg", pixels, params)[1].tobytes()
    good = {"complete": data, "trailing_data": data + b"camera trailer " * 400}
    for name, content in good.items():
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(content)
        assert check_file(path, "header") is None and check_file(path, "decode") is None, name
    sos = data.rfind(b"\xff\xda")
    for fraction in (0.2, 0.5, 0.9):
        cut = data[: sos + int((len(data) - sos) * fraction)]
        forged, plain = tmp_path / f"forged-{fraction}.jpg", tmp_path / f"cut-{fraction}.jpg"
        forged.write_bytes(cut + b"\xff\xd9")
        plain.write_bytes(cut)
        assert check_file(forged, "header") is None
        assert check_file(forged, "decode")[0] == "truncated"
        assert check_file(plain, "header") == ("truncated", "truncated JPEG (no end-of-image marker)")


def test_png_chunk_walk_finds_a_cut_file_given_a_new_end(tmp_path):
    from kd_keras.data.validate import check_file

    data = cv2.imencode(".png", np.random.default_rng(4).integers(0, 255, (64, 64), dtype=np.uint8))[1].tobytes()
    complete, forged = tmp_path / "complete.png", tmp_path / "forged.png"
    complete.write_bytes(data)
    forged.write_bytes(data[: len(data) * 2 // 3] + b"\x00\x00\x00\x00IEND\xaeB`\x82")
    assert check_file(complete, "header") is None
    kind, detail = check_file(forged, "header")
    assert kind == "truncated" and detail.startswith("truncated PNG (chunk IDAT at byte 33 needs")
