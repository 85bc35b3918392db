"""A corpus of bad input, generated here, with the outcome of each kind asserted: skipped and reported (with its
kind), noted, accepted, or refused before training with one line naming the file and the problem. The same corpus
is streamed through tf.data unchecked: no exception mid-epoch, and every listed file is either yielded or in the
report (no silent drop)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from kd_keras.data import pipeline, sources
from kd_keras.data.preprocess import PreprocessConfig
from kd_keras.data.validate import DataError, check_file, check_files

SIZE = 16


def _encode(image: np.ndarray, suffix: str) -> bytes:
    ok, data = cv2.imencode(suffix, image)
    assert ok
    return data.tobytes()


def _noise(seed: int, channels: int = 1) -> np.ndarray:
    shape = (SIZE, SIZE) if channels == 1 else (SIZE, SIZE, channels)
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def _good_png(path: Path, seed: int = 0) -> None:
    path.write_bytes(_encode(_noise(seed), ".png"))


def _cmyk_jpeg(path: Path) -> None:
    Image.new("CMYK", (SIZE, SIZE), (0, 255, 255, 0)).save(path, format="JPEG")  # pure red in CMYK


def _png16(path: Path) -> None:
    assert cv2.imwrite(str(path), np.full((SIZE, SIZE), 65535, np.uint16))


def _rgba(path: Path) -> None:
    image = np.zeros((SIZE, SIZE, 4), np.uint8)
    image[..., 2] = 200  # red in BGRA
    image[..., 3] = 10  # nearly transparent: alpha is dropped, not blended
    path.write_bytes(_encode(image, ".png"))


def _truncated_jpeg(path: Path) -> None:
    data = _encode(_noise(1, 3), ".jpg")
    path.write_bytes(data[: len(data) * 6 // 10])


def _truncated_png(path: Path) -> None:
    data = _encode(_noise(2), ".png")
    path.write_bytes(data[: len(data) // 2])


# (relative path in the class-folder tree, how to make it, expected outcome after checking with mode="decode")
# Outcomes: ("accepted",) | ("skipped", kind) | ("note", kind)
CORPUS = [
    ("CNV/CNV-1-1.png", _good_png, ("accepted",)),
    ("CNV/CNV-2-1.JPG", lambda p: p.write_bytes(_encode(_noise(3, 3), ".jpg")), ("accepted",)),  # upper-case suffix
    ("CNV/CNV-3-1 ümlaut.png", _good_png, ("accepted",)),  # non-ASCII name
    ("CNV/CNV-4-1.jpeg", _cmyk_jpeg, ("accepted",)),  # CMYK JPEG -> RGB
    ("CNV/CNV-5-1.png", _png16, ("accepted",)),  # 16-bit PNG
    ("CNV/CNV-6-1.png", _rgba, ("accepted",)),  # RGBA: alpha dropped
    ("CNV/deeper/CNV-7-1.png", _good_png, ("accepted",)),  # nested folder inside a class
    ("CNV/CNV-8-1.jpeg", lambda p: p.write_bytes(b""), ("skipped", "empty_file")),
    ("CNV/CNV-9-1.jpeg", _truncated_jpeg, ("skipped", "truncated")),
    ("CNV/CNV-10-1.png", _truncated_png, ("skipped", "truncated")),
    ("CNV/CNV-11-1.png", lambda p: p.write_text("this is a text file, not a scan\n"), ("skipped", "not_image")),
    ("CNV/CNV-12-1.jpg", lambda p: p.write_bytes(b"\x00" + np.random.default_rng(5).bytes(700)),
     ("skipped", "not_image")),
    ("CNV/CNV-13-1.png", lambda p: p.write_bytes(_encode(_noise(6), ".png")[:24]), ("skipped", "truncated")),
    ("CNV/CNV-14-1.png", lambda p: os.symlink(p.parents[2] / "outside" / "secret.png", p), ("skipped", "outside_root")),
    ("CNV/CNV-15-1.png", lambda p: os.symlink(p.parent / "gone.png", p), ("skipped", "unreadable")),  # dangling
    ("CNV/CNV-16-1.png", lambda p: os.symlink(p.parent / "CNV-1-1.png", p), ("accepted",)),  # symlink inside root
    ("CNV/._CNV-1-1.png", lambda p: p.write_bytes(b"\x00\x05\x16\x07AppleDouble"), ("note", "ignored_file")),
    ("CNV/notes.txt", lambda p: p.write_text("reader notes"), ("note", "ignored_file")),
    ("CNV/__MACOSX", lambda p: p.mkdir(), ("note", "ignored_file")),
    ("CNV/linked_folder", lambda p: os.symlink(p.parents[2] / "outside", p), ("note", "ignored_file")),
    ("stray-1-1.png", _good_png, ("skipped", "no_class_folder")),  # image outside any class folder
    ("NORMAL/NORMAL-1-1.png", _good_png, ("accepted",)),
    ("NORMAL/NORMAL-2-1.png", lambda p: _good_png(p, 7), ("accepted",)),
]


@pytest.fixture()
def corpus(tmp_path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    _good_png(outside / "secret.png")
    root = tmp_path / "data"
    for relative, make, _ in CORPUS:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)
    return root


def _outcomes(records, root: Path) -> dict[str, tuple]:
    found = {os.path.relpath(p, root): ("accepted",) for p in records.paths}
    for problem in records.report.entries():
        key = os.path.relpath(problem.path, root)
        assert "\n" not in problem.detail
        found.setdefault(key, (problem.action, problem.kind))
    return found


def test_each_kind_of_bad_file_has_its_outcome(corpus):
    records = check_files(sources.from_class_folders(corpus), mode="decode")
    outcomes = _outcomes(records, corpus)
    for relative, _, expected in CORPUS:
        assert outcomes.get(relative) == expected, relative
    kinds = {expected[1] for _, _, expected in CORPUS if expected[0] != "accepted"}
    assert len(kinds) == 7  # the CSV, list, .npz and refusal tests below cover the other kinds
    summary = records.report.to_dict()
    assert summary["skipped"] == sum(e[0] == "skipped" for _, _, e in CORPUS)
    assert sorted(summary["skipped_by_kind"]) == sorted({e[1] for _, _, e in CORPUS if e[0] == "skipped"})


def test_accepted_odd_images_decode_as_documented(corpus):
    records = sources.from_class_folders(corpus)
    config = PreprocessConfig((SIZE, SIZE), channels=3)
    stream = pipeline.make_dataset(records, config, batch_size=64, shuffle=False)
    batch = next(iter(stream))
    by_name = {os.path.basename(records.paths[i]): batch["image"][k].numpy()
               for k, i in enumerate(batch["index"].numpy())}
    np.testing.assert_allclose(by_name["CNV-5-1.png"], 255.0)  # 16-bit full scale -> 255
    red = by_name["CNV-4-1.jpeg"].mean(axis=(0, 1))
    assert red[0] > 200 and red[1] < 40 and red[2] < 40  # CMYK red read as RGB red
    np.testing.assert_allclose(by_name["CNV-6-1.png"].mean(axis=(0, 1)), [200, 0, 0])  # alpha dropped


def test_header_check_catches_cut_files_without_decoding(corpus):
    assert check_file(corpus / "CNV/CNV-9-1.jpeg", "header") == ("truncated", "truncated JPEG (no end-of-image marker)")
    assert check_file(corpus / "CNV/CNV-10-1.png", "header")[0] == "truncated"
    assert check_file(corpus / "CNV/CNV-11-1.png", "header")[0] == "not_image"
    assert check_file(corpus / "CNV/CNV-1-1.png", "header") is None
    assert check_file(corpus / "CNV/CNV-8-1.jpeg", "exists")[0] == "empty_file"
    assert check_file(corpus / "CNV/missing.png", "exists")[0] == "missing_file"
    assert check_file(corpus / "CNV", "exists")[0] == "not_a_file"


def test_unchecked_corpus_streams_without_exception_or_silent_drop(corpus):
    records = sources.from_class_folders(corpus)  # resolution only: pixel problems reach tf.data
    listed = set(records.paths)
    (corpus / "NORMAL/NORMAL-2-1.png").unlink()  # deleted after it was listed
    config = PreprocessConfig((SIZE, SIZE), channels=1, clahe=True)
    stream = pipeline.make_dataset(records, config, batch_size=4, seed=0)
    for _ in range(2):  # two epochs: a bad file is reported once, not once per epoch
        yielded = [records.paths[i] for batch in stream for i in batch["index"].numpy()]
    skipped_at_runtime = {p.path: p.kind for p in records.report.entries("skipped") if p.path in listed}
    assert set(yielded) | set(skipped_at_runtime) == listed and not set(yielded) & set(skipped_at_runtime)
    names = {os.path.basename(path): kind for path, kind in skipped_at_runtime.items()}
    assert names == {"CNV-9-1.jpeg": "truncated", "CNV-10-1.png": "truncated", "CNV-11-1.png": "not_image",
                     "CNV-12-1.jpg": "not_image", "CNV-13-1.png": "truncated", "NORMAL-2-1.png": "unreadable"}
    assert len(records.report.entries("skipped")) == len(set(p.path for p in records.report.entries("skipped")))


def _csv_case(tmp_path: Path, body: str) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _good_png(images / name)
    (images / "folder.png").mkdir()
    _good_png(tmp_path / "outside.png")
    _good_png(tmp_path / "outside_abs.png")
    table = images / "labels.csv"
    table.write_text("file,label\n" + body)
    return table


def test_csv_rows_each_kind(tmp_path):
    table = _csv_case(tmp_path, "\n".join([
        "a.png,NORMAL",  # accepted
        "b.png,CNV",  # accepted
        "missing.png,CNV",  # missing file
        "c.png,PIZZA",  # unknown label
        "d.png,",  # blank label
        "../outside.png,CNV",  # escapes the root with ../
        f"{tmp_path / 'outside_abs.png'},CNV",  # absolute path outside the root
        "folder.png,CNV",  # a folder, not a file
        "a.png,NORMAL",  # duplicate row, same label
        "b.png,NORMAL",  # conflicting label for b.png
        ",CNV",  # empty file cell
    ]) + "\n")
    records = sources.from_csv(table, classes=("NORMAL", "CNV"))
    assert [os.path.basename(p) for p in records.paths] == ["a.png"]
    report = records.report
    kinds = {(os.path.basename(p.path.split(":")[0]), p.kind) for p in report.entries("skipped")}
    assert kinds == {("missing.png", "missing_file"), ("c.png", "unknown_label"), ("d.png", "missing_label"),
                     ("outside.png", "outside_root"), ("outside_abs.png", "outside_root"),
                     ("folder.png", "not_a_file"), ("a.png", "duplicate_row"), ("b.png", "conflicting_labels"),
                     ("labels.csv", "missing_file")}
    assert any("row 4 of labels.csv" in p.detail for p in report.entries("skipped", "missing_file"))
    assert "skipped 9 files" in report.format_summary()  # 9 paths (missing.png and row 12 both missing_file)


def test_multilabel_csv_bad_value_and_list_file(tmp_path):
    table = _csv_case(tmp_path, "")
    table.write_text("file,Edema,Effusion\na.png,1,-1\nb.png,2,0\nc.png,0,\n")
    records = sources.from_csv(table, label_columns=["Edema", "Effusion"])
    assert len(records) == 2 and [p.kind for p in records.report.entries("skipped")] == ["unknown_label"]
    listing = tmp_path / "images" / "pool.txt"
    listing.write_text("a.png\nnope.png\n../outside.png\na.png\n")
    pool = sources.from_list_file(listing)
    assert len(pool) == 1
    assert sorted(p.kind for p in pool.report.entries("skipped")) == ["duplicate_row", "missing_file",
                                                                       "outside_root"]


def _one_line(error: DataError, *parts: str) -> None:
    text = str(error)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, (part, text)


def test_refusals_are_one_line_naming_the_problem(tmp_path, corpus):
    (corpus / "DRUSEN").mkdir()
    (corpus / "DRUSEN" / "readme.txt").write_text("no scans yet")
    with pytest.raises(DataError) as error:
        sources.from_class_folders(corpus)
    _one_line(error.value, str(corpus / "DRUSEN"), "class folder holds no images")
    kept = sources.from_class_folders(corpus, allow_empty_classes=True)
    assert kept.class_counts()["DRUSEN"] == 0 and kept.report.entries("note", "empty_class")

    with pytest.raises(DataError) as error:
        sources.from_class_folders(corpus, classes=("CNV", "DME"))
    _one_line(error.value, "DME", "class folder is missing")

    with pytest.raises(DataError) as error:
        sources.from_class_folders(tmp_path / "nowhere")
    _one_line(error.value, "nowhere", "does not exist")

    with pytest.raises(DataError) as error:
        sources.from_class_folders(corpus, classes=("CNV", "NORMAL"), on_bad_file="raise")
    _one_line(error.value, "stray-1-1.png", "image is not inside a class folder")
    (corpus / "stray-1-1.png").unlink()
    with pytest.raises(DataError) as error:
        sources.from_class_folders(corpus, classes=("CNV", "NORMAL"), on_bad_file="raise")
    _one_line(error.value, "CNV-14-1.png", "escapes the data root", "via a symlink")

    with pytest.raises(DataError) as error:
        check_files(sources.from_class_folders(corpus, classes=("CNV", "NORMAL")), "decode", on_bad_file="raise")
    _one_line(error.value, "CNV-10-1.png", "truncated PNG", "(5 bad files in all)")

    bad_only = tmp_path / "bad_only" / "A"
    bad_only.mkdir(parents=True)
    _truncated_png(bad_only / "x.png")
    with pytest.raises(DataError) as error:
        check_files(sources.from_class_folders(bad_only.parent), "header")
    _one_line(error.value, "bad_only", "none of the 1 files is usable")

    empty_pool = tmp_path / "empty_pool"
    empty_pool.mkdir()
    (empty_pool / "a.txt").write_text("x")
    with pytest.raises(DataError) as error:
        sources.from_folder(empty_pool)
    _one_line(error.value, "empty_pool", "no usable image")


def test_table_refusals(tmp_path):
    table = _csv_case(tmp_path, "a.png,NORMAL\n")
    with pytest.raises(DataError) as error:
        sources.from_csv(table, label_column="diagnosis")
    _one_line(error.value, "labels.csv", "no label column 'diagnosis'", "columns: file, label")
    header_only = tmp_path / "header_only.csv"
    header_only.write_text("file,label\n")
    with pytest.raises(DataError) as error:
        sources.from_csv(header_only)
    _one_line(error.value, "header_only.csv", "no rows")
    sheet = tmp_path / "Annotation_Base11.xls"
    sheet.write_bytes(b"\xd0\xcf\x11\xe0")
    with pytest.raises(DataError) as error:
        sources.messidor(sheet)
    _one_line(error.value, "Annotation_Base11.xls", "export the sheet to CSV")
    all_bad = tmp_path / "images" / "all_bad.csv"
    all_bad.write_text("file,label\nmissing1.png,A\nmissing2.png,A\n")
    with pytest.raises(DataError) as error:
        sources.from_csv(all_bad)
    _one_line(error.value, "all_bad.csv", "no usable rows", "2 missing_file")

    npz = tmp_path / "bad.npz"
    np.savez(npz, train_images=np.zeros((3, 8, 8), np.uint8), train_labels=np.asarray([0, 1]))
    with pytest.raises(DataError) as error:
        sources.from_npz(npz)
    _one_line(error.value, "bad.npz", "3 images but 2 labels")
    with pytest.raises(DataError) as error:
        sources.from_npz(npz, split="test")
    _one_line(error.value, "bad.npz", "no 'test_images' array")
    ok = tmp_path / "labels_out_of_range.npz"
    np.savez(ok, train_images=np.zeros((3, 8, 8), np.uint8), train_labels=np.asarray([0, 1, 7]))
    records = sources.from_npz(ok, class_names=("a", "b"))
    assert len(records) == 2 and records.report.entries("skipped", "unknown_label")[0].path.endswith("[2]")


def test_pipeline_refuses_bad_streams_before_training(tmp_path):
    root = tmp_path / "d"
    (root / "A").mkdir(parents=True)
    for k in range(3):
        _good_png(root / "A" / f"A-{k}-1.png", k)
    records = sources.from_class_folders(root)
    config = PreprocessConfig((SIZE, SIZE), channels=1)
    with pytest.raises(DataError) as error:
        pipeline.make_dataset(records, config, 2, teacher_logits=np.zeros((2, 4), np.float32))
    _one_line(error.value, "teacher_logits", "holds 2 rows")
    with pytest.raises(DataError) as error:
        pipeline.make_dataset(records, config, 2, indices=[0, 5])
    _one_line(error.value, "indices must be within 0..2")
