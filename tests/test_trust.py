"""Trustworthy runs (issue 16, items 1-3): `kd-keras run oct` on a generated corpus of bad input.

Each kind is run through ``kd_keras.cli.main(["run", "oct", "--preset", "smoke", ...])`` in this process and its
outcome asserted: refused (exit status 2 and one line naming the file, folder or option and what to do) or left
out and reported (the run goes on: the count and list on screen). No case trains: the run is stopped right after
the data is prepared and checked, so a case that would train ends with that stop's line instead, and each case
is timed (a refusal must cost seconds, not a teacher's training).

The held-out guarantees are asserted on :func:`kd_keras.studies.oct_data.prepare_data` too: whatever the route
(same path, symlink, hard link, identical bytes), no pool image is a labeled, validation or test image.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from kd_keras.cli import main

SIZE = 40
STOP = "stopped before training (test)"
PATIENTS = 6  # per class of the labeled set


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)


def _image_bytes(seed: int, suffix: str = ".png") -> bytes:
    ok, data = cv2.imencode(suffix, _noise(seed))
    assert ok
    return data.tobytes()


def _write(path: Path, seed: int, suffix: str = ".png") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_image_bytes(seed, suffix))
    return path


def _corpus(root: Path) -> dict[str, Path]:
    """A good corpus: data/{NORMAL,CNV} (6 patients x 2 B-scans each), test/{NORMAL,CNV}, pool/ (8 images)."""
    seed = 0
    for cls in ("NORMAL", "CNV"):
        for patient in range(PATIENTS):
            for scan in range(2):
                seed += 1
                _write(root / "data" / cls / f"{cls}-{1000 + 100 * (cls == 'CNV') + patient}-{scan}.png", seed)
        for patient in range(3):
            seed += 1
            _write(root / "test" / cls / f"{cls}-{5000 + 100 * (cls == 'CNV') + patient}-0.png", seed)
    for i in range(8):
        seed += 1
        _write(root / "pool" / f"POOL-{9000 + i}-0.png", seed)
    return {"data": root / "data", "test": root / "test", "pool": root / "pool"}


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def stop_before_training(monkeypatch):
    """The run stops right after the data is prepared and checked (the runner asks for the stages next)."""
    from kd_keras.studies.oct_config import StudyError
    from kd_keras.studies.oct_student_teacher import OCTStudy

    def stages(self, ctx):
        raise StudyError(STOP)

    monkeypatch.setattr(OCTStudy, "stages", stages)


def _run(tmp_path: Path, dirs: dict[str, Path], *extra: str, pool: bool = True, test: bool = True):
    argv = ["run", "oct", "--preset", "smoke", "--no-progress", "--data-dir", str(dirs["data"]),
            "--out", str(tmp_path / "out")]
    if pool:
        argv += ["--unlabeled-dir", str(dirs["pool"])]
    if test:
        argv += ["--test-dir", str(dirs["test"])]
    start = time.perf_counter()
    code = main([*argv, *extra])
    return code, time.perf_counter() - start


# --------------------------------------------------------------------------------------------------- the corpus
# Each kind: (name, how to break the good corpus, extra options, expected outcome). Outcome: ("refused", words
# the one error line holds) or ("left_out", files left out, words the screen holds). Pool and test flags: the
# default run passes --unlabeled-dir pool/ and --test-dir test/.


def _pool_copy_of(source: str, link: str) -> Callable:
    """Puts into the pool a copy, symlink or hard link of the first image of ``source`` ("test/CNV", ...)."""

    def make(d):
        top, _, folder = source.partition("/")
        src = sorted((d[top] / folder).glob("*.png"))[0]
        target = d["pool"] / f"leak-{src.name}"
        if link == "copy":
            target.write_bytes(src.read_bytes())
        elif link == "symlink":
            target.symlink_to(src)
        else:
            os.link(src, target)

    return make


def _test_copy_in_training(d):
    src = sorted((d["test"] / "CNV").glob("*.png"))[0]
    (d["data"] / "CNV" / f"CNV-1150-{0}.png").write_bytes(src.read_bytes())


def _two_labels(d):
    src = sorted((d["data"] / "NORMAL").glob("*.png"))[0]
    (d["data"] / "CNV" / "CNV-1199-0.png").write_bytes(src.read_bytes())


def _misc_folder(d):
    _write(d["data"] / "misc" / "misc-1300-0.png", 777)


def _only_normal(d):
    for f in (d["data"] / "CNV").iterdir():
        f.unlink()
    (d["data"] / "CNV").rmdir()


def _empty_normal(d):
    for f in (d["data"] / "NORMAL").iterdir():
        f.unlink()


def _all_normal_truncated(d):
    for f in (d["data"] / "NORMAL").iterdir():
        _truncate(f)


def _cat_dog(d):
    (d["data"] / "NORMAL").rename(d["data"] / "CAT")
    (d["data"] / "CNV").rename(d["data"] / "DOG")


def _no_class_folders(d):
    for cls in ("NORMAL", "CNV"):
        for f in (d["data"] / cls).iterdir():
            f.unlink()
        (d["data"] / cls).rmdir()


def _all_pool_truncated(d):
    for f in d["pool"].iterdir():
        _truncate(f)


def _pool_not_images(d):
    for f in list(d["pool"].iterdir()):
        f.write_text("not an image")


def _pool_is_parent(d):
    for f in list(d["pool"].iterdir()):
        f.rename(d["data"].parent / f.name)


def _class_symlinks_to_one_folder(d):
    (d["data"] / "CNV").rename(d["data"].parent / "cnv_elsewhere")
    (d["data"] / "CNV").symlink_to(d["data"] / "NORMAL")


def _test_without_normal(d):
    (d["test"] / "NORMAL").rename(d["test"] / "HEALTHY")


def _truncated_files(d):
    # One truncated JPEG in the labeled set, one truncated PNG in the pool and one in the test set.
    jpeg = d["data"] / "CNV" / "CNV-1105-9.jpeg"
    _write(jpeg, 4242, ".jpg")
    _truncate(jpeg, 0.6)
    _truncate(sorted(d["pool"].glob("*.png"))[0])
    _truncate(sorted((d["test"] / "NORMAL").glob("*.png"))[0])


def _empty_and_text_files(d):
    (d["data"] / "NORMAL" / "NORMAL-1000-7.png").write_bytes(b"")
    (d["pool"] / "POOL-9100-0.jpeg").write_text("this is text, not a JPEG")
    (d["pool"] / "readme.txt").write_text("notes")  # no image suffix: noted, not left out


def _dangling_and_fifo(d):
    (d["pool"] / "POOL-9101-0.png").symlink_to(d["pool"] / "gone.png")
    os.mkfifo(d["pool"] / "POOL-9102-0.png")


def _odd_names(d):
    _write(d["data"] / "NORMAL" / "NORMAL-1010-0 scan (copy).png", 901)
    _write(d["data"] / "CNV" / "CNV-1110-0-Überweisung-網膜.png", 902)
    _write(d["pool"] / "pool image ü 1.png", 903)


def _corrupt_png_inside(d):
    # Complete file (signature, IEND), damaged data: only a decode finds it.
    path = sorted((d["data"] / "CNV").glob("*.png"))[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 20] = bytes(20)
    path.write_bytes(bytes(data))


def _symlinked_class_folder(d):
    (d["data"] / "CNV").rename(d["data"].parent / "cnv_elsewhere")
    (d["data"] / "CNV").symlink_to(d["data"].parent / "cnv_elsewhere")


CASES = [
    # name, make, extra options, pool, test, outcome
    ("missing_data_dir", lambda d: None, ["--data-dir", "/nonexistent/data"], True, True,
     ("refused", "/nonexistent/data", "does not exist")),
    ("data_dir_is_a_file", lambda d: (d["data"].parent / "file.txt").write_text("x"),
     ["--data-dir", "{root}/file.txt"], True, True, ("refused", "file.txt", "not a folder")),
    ("no_class_folders", _no_class_folders, [], True, True, ("refused", "no class folders")),
    ("no_normal_folder", _cat_dog, [], True, True, ("refused", "'NORMAL'", "--normal-class")),
    ("unknown_class_folder", _misc_folder, [], True, True,
     ("refused", "misc", "'misc'", "--abnormal-classes", "--ignored-classes misc")),
    ("abnormal_classes_exclude_a_folder", lambda d: None, ["--abnormal-classes", "DME"], True, True,
     ("refused", "'CNV'", "--abnormal-classes DME CNV")),
    ("one_class_only", _only_normal, [], True, True, ("refused", "no usable ABNORMAL images")),
    ("empty_normal_folder", _empty_normal, [], True, True, ("refused", "no usable NORMAL images", "add images")),
    ("all_normal_truncated", _all_normal_truncated, [], True, True,
     ("refused", "no usable NORMAL images", "12 truncated")),
    ("test_set_without_normal", _test_without_normal, [], True, True, ("refused", "test", "--normal-class")),
    ("missing_pool_dir", lambda d: None, ["--unlabeled-dir", "/nonexistent/pool"], False, True,
     ("refused", "/nonexistent/pool", "does not exist")),
    ("no_pool", lambda d: None, [], False, True, ("refused", "no unlabeled images", "--unlabeled-dir")),
    ("pool_all_truncated", _all_pool_truncated, [], True, True, ("refused", "pool", "none of the 8 files")),
    ("pool_only_text_files", _pool_not_images, [], True, True, ("refused", "pool", "none of the 8 files")),
    ("unlabeled_dir_is_data_dir", lambda d: None, ["--unlabeled-dir", "{root}/data"], False, True,
     ("refused", "--unlabeled-dir", "is the --data-dir", "--held-out-overlap drop")),
    ("unlabeled_dir_contains_data_dir", _pool_is_parent, ["--unlabeled-dir", "{root}"], False, True,
     ("refused", "--unlabeled-dir", "contains the --data-dir")),
    ("unlabeled_dir_is_test_dir", lambda d: None, ["--unlabeled-dir", "{root}/test"], False, True,
     ("refused", "--unlabeled-dir", "is the --test-dir")),
    ("test_dir_is_data_dir", lambda d: None, ["--test-dir", "{root}/data"], True, False,
     ("refused", "--test-dir", "is the --data-dir")),
    ("pool_copy_of_test_image", _pool_copy_of("test/CNV", "copy"), [], True, True,
     ("refused", "unlabeled pool: 1 images", "(test set 'test' 1)", "identical bytes", "--held-out-overlap drop")),
    ("unlabeled_dir_symlink_to_data_dir", lambda d: (d["data"].parent / "pool_link").symlink_to(d["data"]),
     ["--unlabeled-dir", "{root}/pool_link"], False, True, ("refused", "pool_link is the --data-dir")),
    # A symlink in the pool that leads out of the pool folder is never followed: left out and reported.
    ("pool_symlink_to_labeled_image", _pool_copy_of("data/NORMAL", "symlink"), [], True, True,
     ("left_out", 1, "path escapes the data root")),
    ("pool_hard_link_to_labeled_image", _pool_copy_of("data/CNV", "hardlink"), [], True, True,
     ("refused", "unlabeled pool: 1 images", "same file")),
    ("test_image_in_training", _test_copy_in_training, [], True, True,
     ("refused", "test set 'test': 1 images", "(validation 1)", "must never be trained on")),
    ("same_image_two_labels", _two_labels, [], True, True,
     ("refused", "two class folders", "--duplicate-labels keep")),
    ("two_class_symlinks_one_folder", _class_symlinks_to_one_folder, [], True, True,
     ("refused", "two class folders", "same file")),
    ("bad_overlap_option", lambda d: None, ["--held-out-overlap", "maybe"], True, True,
     ("refused", "--held-out-overlap must be one of refuse, drop")),
    ("normal_class_listed_abnormal", lambda d: None, ["--abnormal-classes", "NORMAL", "CNV"], True, True,
     ("refused", "--abnormal-classes", "is the --normal-class")),
    ("truncated_jpeg_and_png", _truncated_files, [], True, True, ("left_out", 3, "truncated JPEG", "truncated PNG")),
    ("empty_and_text_files", _empty_and_text_files, [], True, True, ("left_out", 2, "empty_file", "not_image")),
    ("dangling_symlink_and_fifo", _dangling_and_fifo, [], True, True, ("left_out", 2, "unreadable", "not_a_file")),
    ("corrupt_png_with_file_check_decode", _corrupt_png_inside, ["--file-check", "decode"], True, True,
     ("left_out", 1, "corrupt PNG data")),
    ("spaces_and_unicode_names", _odd_names, [], True, True, ("left_out", 0, "41 files checked")),
    ("symlinked_class_folder", _symlinked_class_folder, [], True, True, ("left_out", 0, "38 files checked")),
    ("ignored_class_folder", _misc_folder, ["--ignored-classes", "misc"], True, True,
     ("left_out", 0, "misc (--ignored-classes): 1 images")),
    ("duplicate_labels_drop", _two_labels, ["--duplicate-labels", "drop"], True, True,
     ("left_out", 2, "under two labels (drop)", "conflicting_labels")),
    ("duplicate_labels_keep", _two_labels, ["--duplicate-labels", "keep"], True, True,
     ("left_out", 0, "under two labels (keep)")),
    ("held_out_overlap_drop", _pool_copy_of("test/NORMAL", "copy"), ["--held-out-overlap", "drop"], True, True,
     ("left_out", 1, "dropped 1 pool images", "held_out_overlap")),
]

TIMES: dict[str, tuple[str, float]] = {}


@pytest.mark.parametrize("name, make, extra, pool, test, outcome", CASES, ids=[c[0] for c in CASES])
def test_bad_input_corpus(tmp_path, capsys, stop_before_training, name, make, extra, pool, test, outcome):
    dirs = _corpus(tmp_path)
    make(dirs)
    capsys.readouterr()
    extra = [e.replace("{root}", str(tmp_path)) for e in extra]
    code, seconds = _run(tmp_path, dirs, *extra, pool=pool, test=test)
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), captured.err[-2000:]
    assert code == 2
    assert "Traceback" not in captured.err
    if outcome[0] == "refused":
        for words in outcome[1:]:
            assert words in err[0], err[0]
        assert STOP not in err[0]
    else:
        assert err[0] == f"error: {STOP}", err[0]  # every check passed: the run went on to the teacher
        left_out, *words = outcome[1:]
        assert f"{left_out} files left out" in captured.out, captured.out
        for word in words:
            assert word in captured.out, captured.out
    assert not (tmp_path / "out" / "stages" / "teacher.json").exists()
    assert seconds < 15, f"{name} took {seconds:.1f} s"
    TIMES[name] = (err[0], seconds)


def test_corpus_has_at_least_twenty_kinds():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)


# ------------------------------------------------------------------------------------------ held-out guarantees


def _prepare(dirs, **settings):
    from kd_keras.studies.oct_config import OCTStudyConfig
    from kd_keras.studies.oct_data import prepare_data

    config = OCTStudyConfig.from_preset("smoke", data_dir=str(dirs["data"]), unlabeled_dirs=(str(dirs["pool"]),),
                                        test_dirs=(str(dirs["test"]),), **settings)
    lines: list[str] = []
    return prepare_data(config, say=lines.append), lines


def _content(paths) -> set[bytes]:
    return {Path(p).read_bytes() for p in paths}


def test_pool_never_holds_a_held_out_image(tmp_path):
    """Copies, symlinks and hard links of train, validation and test images put in the pool: refused by default;
    with --held-out-overlap drop, every one of them is out of the pool (checked by bytes and by real path) and
    reported, and the pool's other images are all kept."""
    from kd_keras.studies.oct_config import StudyError

    dirs = _corpus(tmp_path)
    clean, _ = _prepare(dirs)
    held_out = [*clean.train.paths, *clean.validation.paths, *clean.tests["test"].paths]
    leaks = []
    for i, source in enumerate(held_out[::3]):
        target = dirs["pool"] / f"leak-{i}.png"
        (target.write_bytes(Path(source).read_bytes()) if i % 3 == 0 else
         target.symlink_to(source) if i % 3 == 1 else os.link(source, target))
        leaks.append(target)
    # Symlinks leading out of the pool folder are never followed (left out as outside_root); copies and hard
    # links are found by bytes and by inode.
    linked = {str(p) for i, p in enumerate(leaks) if i % 3 == 1}
    found = {str(p) for p in leaks} - linked
    with pytest.raises(StudyError, match=f"unlabeled pool: {len(found)} images"):
        _prepare(dirs)
    data, lines = _prepare(dirs, held_out_overlap="drop")
    assert len(data.pool) == len(clean.pool) == 8
    assert not _content(data.pool.paths) & _content(held_out)
    assert not {os.path.realpath(p) for p in data.pool.paths} & {os.path.realpath(p) for p in held_out}
    dropped = {e["path"] for e in data.skipped_files() if e["kind"] == "held_out_overlap"}
    assert dropped == found
    assert {e["path"] for e in data.skipped_files() if e["kind"] == "outside_root"} == linked
    assert data.checks["held_out_dropped_from_pool"]["files"] == len(found)
    assert len(data.pool_truth) == len(data.pool)
    assert any(f"dropped {len(found)} pool images" in line for line in lines)


def test_find_same_images_by_path_symlink_hard_link_and_bytes(tmp_path):
    from kd_keras.data.overlap import find_same_images

    a = _write(tmp_path / "a.png", 1)
    (tmp_path / "link.png").symlink_to(a)
    os.link(a, tmp_path / "hard.png")
    (tmp_path / "copy.png").write_bytes(a.read_bytes())
    b = _write(tmp_path / "b.png", 2)
    other = tmp_path / "c.png"  # same size as b, other bytes: read, hashed, not matched
    data = bytearray(b.read_bytes())
    data[-20] ^= 0xFF
    other.write_bytes(bytes(data))
    same = find_same_images({"x": [str(a)], "y": [str(a)]})
    assert [(g.how, sorted(g.sets())) for g in same] == [("same path", ["x", "y"])]
    for name in ("link.png", "hard.png"):
        same = find_same_images({"x": [str(a)], "y": [str(tmp_path / name)]})
        assert [(g.how, sorted(g.sets())) for g in same] == [("same file", ["x", "y"])]
    same = find_same_images({"x": [str(a), str(b)], "y": [str(tmp_path / "copy.png"), str(other)]})
    assert [(g.how, g.rows("x"), g.rows("y")) for g in same] == [("identical bytes", [0], [0])]
    assert find_same_images({"x": [str(a)], "y": [str(tmp_path / "copy.png")]}, compare_bytes=False) == []


def test_unlabeled_dir_equal_to_data_dir_is_refused(tmp_path, capsys):
    """The issue's first example: the pool would hold the validation and test images."""
    dirs = _corpus(tmp_path)
    code = main(["run", "oct", "--preset", "smoke", "--no-progress", "--data-dir", str(dirs["data"]),
                 "--unlabeled-dir", str(dirs["data"]), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == (f"error: --unlabeled-dir {dirs['data']} is the --data-dir {dirs['data']}: its labeled, "
                      "validation and test images would be pseudo-labeled and trained on; pass a folder of other "
                      "images, or --held-out-overlap drop to leave the shared images out of the pool")
    assert not (tmp_path / "out" / "stages" / "teacher.json").exists()
    # With drop, every pool image is a labeled one: nothing is left to pseudo-label.
    code = main(["run", "oct", "--preset", "smoke", "--no-progress", "--data-dir", str(dirs["data"]),
                 "--unlabeled-dir", str(dirs["data"]), "--held-out-overlap", "drop", "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unlabeled pool: all 24 images are also" in err[0], err


def test_left_out_files_reach_results_and_report(tmp_path):
    """What the checks left out is in the data summary (results.json) and in report.md's data checks section."""
    from kd_keras.studies import oct_report

    dirs = _corpus(tmp_path)
    _truncated_files(dirs)
    data, lines = _prepare(dirs)
    summary = data.summary()
    kinds = {e["kind"] for e in summary["skipped_files"]}
    assert kinds == {"truncated"} and len(summary["skipped_files"]) == 3
    assert summary["checks"]["left_out"] == 3 and summary["checks"]["left_out_by_kind"] == {"truncated": 3}
    assert summary["checks"]["files_checked"] == 12 * 2 + 1 + 6 + 8
    assert len(data.pool) == 7 and len(data.tests["test"]) == 5
    section = oct_report.data_checks_section({"data": summary})
    assert "3 files left out" in section and "CNV-1105-9.jpeg" in section and "truncated JPEG" in section
    assert any("3 files left out" in line for line in lines)


def test_symlinked_class_folder_and_odd_names_are_read(tmp_path):
    dirs = _corpus(tmp_path)
    _symlinked_class_folder(dirs)
    _odd_names(dirs)
    data, _ = _prepare(dirs)
    every = [*data.train.paths, *data.validation.paths]
    assert sum("cnv" in p.lower() and "/CNV/" in p for p in every) == 2 * PATIENTS + 1
    assert any(p.endswith("Überweisung-網膜.png") for p in every)
    assert any(p.endswith("scan (copy).png") for p in every)
    assert any(p.endswith("pool image ü 1.png") for p in data.pool.paths)
    assert data.skipped_files() == []


def test_file_check_timing_on_real_bscans(shared_dir):
    """The header check (signature and JPEG end marker) costs well under a second per 1,000 real 496x512
    B-scans; ``file_check="decode"`` decodes them (seconds per 1,000)."""
    from kd_keras.data.sources import from_class_folders
    from kd_keras.data.validate import check_files

    records = from_class_folders(shared_dir / "data" / "kermany-oct-1k")
    start = time.perf_counter()
    checked = check_files(records, mode="header")
    seconds = time.perf_counter() - start
    assert len(checked) == len(records) == 1000
    assert seconds < 2.0, seconds


@pytest.mark.parametrize("option, value", [("--data-dir", "/nonexistent/data"), ("--unlabeled-dir", "/nonexistent/p"),
                                           ("--test-dir", "/nonexistent/t"), ("--unlabeled-dir", "{root}/data"),
                                           ("--test-dir", "{root}/data")])
def test_folder_mistakes_are_refused_before_the_output_folder_is_touched(tmp_path, capsys, option, value):
    """Study.check refuses a missing or shared folder before the runner writes anything under --out."""
    dirs = _corpus(tmp_path)
    out = tmp_path / "out"
    argv = {"--data-dir": str(dirs["data"]), "--unlabeled-dir": str(dirs["pool"]), "--test-dir": str(dirs["test"])}
    argv[option] = value.replace("{root}", str(tmp_path))
    code = main(["run", "oct", "--preset", "smoke", "--no-progress", "--out", str(out),
                 *[item for pair in argv.items() for item in pair]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and argv[option] in err[0], err
    assert not out.exists()
