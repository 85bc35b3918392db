"""Run every kind of bad input of the trust corpora once and write the table to ``docs/trust.md``.

The corpora are the tests' own lists: ``tests/test_trust.py`` (``kd-keras run oct``), ``tests/test_trust_studies.py``
(``run dr``, ``simclr``, ``attention`` and two more for ``oct``) and ``tests/test_trust_commands.py`` (``export``,
``latency``, ``cache``). Each kind is built afresh in a temporary folder, run once through ``kd_keras.cli.main`` in
this process (stopped before any training, as in the tests), its outcome checked as the tests check it, and its
seconds measured around the command alone (corpus generation excluded; TensorFlow and the models' modules are
imported before the first kind, as in a test session).

Example::

    python scripts/trust_table.py                 # writes docs/trust.md
    python scripts/trust_table.py --out /tmp/t.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class _Capture:
    """What pytest's ``capsys`` gives the tests' helpers: ``readouterr()`` of everything printed since."""

    def __init__(self):
        self.out, self.err = io.StringIO(), io.StringIO()

    def readouterr(self):
        captured = argparse.Namespace(out=self.out.getvalue(), err=self.err.getvalue())
        self.out.seek(0), self.out.truncate(), self.err.seek(0), self.err.truncate()
        return captured


def _short(line: str, limit: int = 150) -> str:
    line = line.removeprefix("error: ").replace("|", "\\|")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _went_on(out: str, root: str) -> str:
    """The outcome of a run that went on: its "N files left out (kinds)" and the first file's problem."""
    lines = out.splitlines()
    summary = next((line.split("; ")[-1] for line in lines if "files left out" in line), "")
    first = next((line.strip().removeprefix("left out ") for line in lines if line.startswith("  left out ")), "")
    first = first.replace(root, "<root>")
    return f"went on: {summary}" + (f"; {_short(first, 110)}" if first else "")


def _oct_rows(capture: _Capture) -> list[tuple]:
    import test_trust as oct_corpus

    rows = []
    for name, make, extra, pool, test, outcome in oct_corpus.CASES:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            dirs = oct_corpus._corpus(root)
            make(dirs)
            given = [e.replace("{root}", str(root)) for e in extra]
            capture.readouterr()
            code, seconds = oct_corpus._run(root, dirs, *given, pool=pool, test=test)
            captured = capture.readouterr()
        line = captured.err.strip().splitlines()[-1] if captured.err.strip() else ""
        ok = code == 2 and len(captured.err.strip().splitlines()) == 1
        if outcome[0] == "refused":
            ok = ok and all(words in line for words in outcome[1:])
            result = f"refused: {_short(line)}"
        else:
            ok = ok and line == f"error: {oct_corpus.STOP}" and f"{outcome[1]} files left out" in captured.out
            result = _went_on(captured.out, folder)
        result = result.replace(folder, "<root>")
        rows.append((name, "run oct " + " ".join(extra).replace("{root}", "<root>"), result, seconds, ok))
    return rows


def _study_rows(capture: _Capture) -> list[tuple]:
    import test_trust_studies as corpus

    rows = []
    for case in corpus.CASES:
        with tempfile.TemporaryDirectory() as folder:
            code, out, err, seconds = corpus.run_case(Path(folder), case, capture)
        try:
            line = corpus.check_outcome(case, code, out, err)
            ok = True
        except AssertionError:
            line, ok = (err.strip().splitlines() or [""])[-1], False
        outcome = case[4]
        result = (f"refused: {_short(line.replace(folder, '<root>'))}" if outcome[0] == "refused"
                  else _went_on(out, folder))
        command = f"run {case[1]} " + " ".join(case[3])
        rows.append((case[0], command.replace("{", "<").replace("}", ">"), result, seconds, ok))
    return rows


def _command_rows(capture: _Capture) -> list[tuple]:
    import numpy as np
    import pytest
    import test_trust_commands as corpus

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        files = corpus.make_files(Path(folder) / "files")
        np.savez(files["root"] / "parity.npz", images=np.zeros((4, corpus.SIZE, corpus.SIZE, 1), np.float32))
        for i, case in enumerate(corpus.CASES):
            try:
                code, err, seconds = corpus.run_case(files, Path(folder) / f"out{i}", case, capture)
            except pytest.skip.Exception:
                continue
            try:
                line, ok = corpus.check_refusal(files, case, code, err), True
            except AssertionError:
                line, ok = (err.strip().splitlines() or [""])[-1], False
            command = " ".join(case[1]).replace("{", "<").replace("}", ">")
            rows.append((case[0], command, f"refused: {_short(line.replace(str(files['root']), '<root>'))}",
                         seconds, ok))
    return rows


def table(rows: list[tuple]) -> str:
    lines = ["| kind | command | outcome | seconds |", "| --- | --- | --- | ---: |"]
    for name, command, result, seconds, ok in rows:
        mark = "" if ok else " **(unexpected)**"
        lines.append(f"| {name} | `kd-keras {command}` | {result}{mark} | {seconds:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "trust.md"))
    args = parser.parse_args(argv)
    import pytest
    import test_trust_studies

    # As under pytest, the data layer's per-file warnings go to a log handler, not to the one error line.
    logging.getLogger().addHandler(logging.NullHandler())
    capture = _Capture()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    start = time.perf_counter()
    with contextlib.redirect_stdout(capture.out), contextlib.redirect_stderr(capture.err), \
            pytest.MonkeyPatch.context() as patch:
        import kd_keras.cli  # noqa: F401 - imported before the first kind is timed, as in a test session

        test_trust_studies._stop_before_training(patch)
        groups = {"`kd-keras run oct` (the main job, tests/test_trust.py)": _oct_rows(capture),
                  "`kd-keras run dr`, `simclr`, `attention` (tests/test_trust_studies.py)": _study_rows(capture),
                  "`kd-keras export`, `latency`, `cache` (tests/test_trust_commands.py)": _command_rows(capture)}
    total = time.perf_counter() - start
    every = [row for rows in groups.values() for row in rows]
    refused = [row[3] for row in every if row[2].startswith("refused")]
    unexpected = [row[0] for row in every if not row[4]]
    text = [
        "# Trustworthy runs: the bad-input corpus",
        "",
        "Every kind of bad input the tests try (issue 16), run once by `python scripts/trust_table.py` on "
        f"this machine ({os.cpu_count()} CPU cores shared with other jobs: load average {load:.1f} at the start; "
        f"Python {platform.python_version()}): "
        "the command as given after the corpus was broken (`<data>`, `<pool>`, `<root>`: the generated folders), "
        "what happened, and the seconds the command took (measured around `kd_keras.cli.main` alone, in one "
        "process, imports done). A refusal is exit status 2 with one `error:` line naming the file or option; "
        "\"went on\" means every check passed and the run went on to its first training (where the corpus stops it), "
        "with the bad files left out, counted and listed on screen, in `report.md` and in `results.json` (the "
        "count and kinds, and the first file's problem, are shown).",
        "",
        f"{len(every)} kinds, {len(refused)} refusals: median {statistics.median(refused):.2f} s, slowest "
        f"{max(refused):.2f} s; {len(every) - len(refused)} runs that went on with files left out. "
        f"{'Every outcome as the tests expect.' if not unexpected else 'UNEXPECTED: ' + ', '.join(unexpected)} "
        f"({total:.0f} s in all.)",
    ]
    for title, rows in groups.items():
        text += ["", f"## {title}", "", table(rows)]
    Path(args.out).write_text("\n".join(text) + "\n")
    print(f"wrote {args.out}: {len(every)} kinds, {len(unexpected)} unexpected")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
