"""The settings layer (presets < config files < options < --set), the runner's stage store and the kd-keras
command, on a toy study that trains nothing (fast: no TensorFlow)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kd_keras.config import ConfigError, config_to_dict, field_help, resolve_config, write_config
from kd_keras.runner import RunContext, RunError, Stage, StageFailedError, StageStore, Study, run_study

REPO = Path(__file__).resolve().parents[1]


@dataclass
class ToyConfig:
    """Settings of the toy study.

    Args:
        epochs: training epochs.
        rate, momentum: optimizer settings.
        names: model names.
        extra: free-form options.
    """

    preset: str = "quick"
    epochs: int = 3
    rate: float = 0.1
    momentum: float = 0.9
    names: tuple[str, ...] = ("a",)
    extra: dict = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")


PRESETS = {"quick": {"epochs": 2, "extra": {"size": 8, "mode": "x"}}, "paper": {"epochs": 300}}


def resolve(**kwargs):
    return resolve_config(ToyConfig, PRESETS, study="toy", **kwargs)


def test_layers_override_in_order(tmp_path):
    assert resolve().epochs == 2 and resolve(preset="paper").epochs == 300
    file = tmp_path / "c.yaml"
    file.write_text("study: toy\nepochs: 5\nextra: {size: 16}\nnames: [b, c]\n")
    config = resolve(files=[file])
    assert (config.epochs, config.names) == (5, ("b", "c"))
    assert config.extra == {"size": 16, "mode": "x"}  # dictionaries merge key by key
    config = resolve(files=[file], flags={"epochs": 7, "rate": None}, sets=["epochs=9", "extra.mode=y", "rate=1e-3"])
    assert (config.epochs, config.extra["mode"], config.rate) == (9, "y", 0.001)
    json_file = tmp_path / "c.json"
    json_file.write_text(json.dumps({"preset": "paper", "momentum": 0}))
    assert (resolve(files=[json_file]).epochs, resolve(files=[json_file]).momentum) == (300, 0.0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sets": ["epoch=3"]}, "unknown setting 'epoch' (did you mean 'epochs'?)"),
    ({"sets": ["epochs=many"]}, "setting 'epochs': Input should be a valid integer"),
    ({"sets": ["epochs=0"]}, "--epochs must be >= 1, got 0"),
    ({"sets": ["epochs"]}, "expected key=value"),
    ({"sets": ["rate.x=1"]}, "'rate' is not a dictionary setting"),
    ({"preset": "fast"}, "--preset 'fast': not a preset of this study (presets: quick, paper)"),
    ({"files": ["missing.yaml"]}, "--config missing.yaml: cannot read it"),
])
def test_bad_settings_are_one_line(kwargs, message):
    with pytest.raises(ConfigError) as error:
        resolve(**kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_config_file_errors(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("study: oct\nepochs: 2\n")
    with pytest.raises(ConfigError, match="settings of study 'oct', not 'toy'"):
        resolve(files=[other])
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML or JSON at line"):
        resolve(files=[broken])
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        resolve(files=[scalar])


def test_written_config_replays_exactly(tmp_path):
    config = resolve(preset="paper", sets=["names=[x, y]", "extra.size=3", "rate=0.5"])
    path = write_config(tmp_path / "config.yaml", config, "toy")
    assert path.read_text().startswith("# kd-keras settings of one run")
    assert resolve(files=[path]) == config
    assert config_to_dict(resolve(files=[path])) == config_to_dict(config)


def test_field_help_reads_the_docstring():
    helps = field_help(ToyConfig)
    assert helps["epochs"] == "training epochs."
    assert helps["rate"] == helps["momentum"] == "optimizer settings."


# ------------------------------------------------------------------------------------------------ runner


class Toy(Study):
    name, title = "toy", "a toy study"
    config_class, presets = ToyConfig, PRESETS

    def __init__(self, fail_at: str | None = None):
        self.calls: list[str] = []
        self.fail_at = fail_at

    def prepare(self, ctx):
        return {"n": 4}

    def stages(self, ctx):
        def make(name):
            def run(ctx: RunContext):
                self.calls.append(name)
                if name == self.fail_at:
                    raise ZeroDivisionError("boom")
                inner = ctx.stage(f"{name}/inner", lambda: {"value": len(self.calls)})
                return {"value": ctx.data["n"] * len(self.calls), "inner": inner["value"]}

            return Stage(name, run)

        return [make("first"), make("second")]

    def results(self, ctx):
        return {"first": ctx.outputs["first"], "second": ctx.outputs["second"]}

    def report(self, results, out):
        (out / "report.md").write_text(f"# toy\n{results['second']['value']}\n")


def test_stages_run_once_and_resume_skips_them(tmp_path):
    config = resolve()
    study = Toy()
    results = run_study(study, config, tmp_path / "run", say=lambda _: None, command=["x"])
    assert study.calls == ["first", "second"]
    assert results["second"] == {"value": 8, "inner": 2} and results["run"]["resumed_stages"] == []
    assert (tmp_path / "run" / "stages" / "first__inner.json").is_file()
    assert resolve(files=[tmp_path / "run" / "config.yaml"]) == config
    again = Toy()
    resumed = run_study(again, config, tmp_path / "run", resume=True, say=lambda _: None)
    assert again.calls == [] and resumed["second"] == results["second"]
    assert set(resumed["run"]["resumed_stages"]) == {"first", "second"}


def test_a_failed_stage_is_named_and_resume_continues_after_the_last_finished(tmp_path):
    config = resolve()
    with pytest.raises(StageFailedError, match="stage 'second' failed; .*--resume") as error:
        run_study(Toy(fail_at="second"), config, tmp_path / "run", say=lambda _: None)
    assert isinstance(error.value.__cause__, ZeroDivisionError)
    study = Toy()
    run_study(study, config, tmp_path / "run", resume=True, say=lambda _: None)
    assert study.calls == ["second"]  # the first stage was not run again



def test_rerun_from_computes_a_stage_and_the_later_ones_again_and_keeps_the_old_records(tmp_path):
    out, config, lines = tmp_path / "run", resolve(), []
    run_study(Toy(), config, out, say=lambda _: None)
    old_second = json.loads((out / "stages" / "second.json").read_text())
    study = Toy()
    results = run_study(study, config, out, resume=True, rerun_from="second", say=lines.append)
    assert study.calls == ["second"] and results["first"]["value"] == 4  # the first stage read back
    assert results["run"]["resumed_stages"] == ["first"]
    assert any(line.startswith("--rerun-from second: computing second and every later stage again; the earlier "
                               "results of those stages were moved to ") for line in lines)
    stale = [p for p in (out / "previous").iterdir() if p.name.endswith("-stale")]
    assert len(stale) == 1
    assert json.loads((stale[0] / "stages" / "second.json").read_text()) == old_second  # moved, not deleted
    assert (stale[0] / "stages" / "second__inner.json").is_file() and (out / "stages" / "first__inner.json").is_file()
    everything = Toy()
    run_study(everything, config, out, resume=True, rerun_from="first", say=lambda _: None)
    assert everything.calls == ["first", "second"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"resume": True, "rerun_from": "third"}, "--rerun-from third: not a stage of this run; its stages: first, second"),
    ({"rerun_from": "second"}, "--rerun-from second: continues the run in "),
])
def test_rerun_from_a_wrong_stage_or_without_resume_is_one_line_and_runs_nothing(tmp_path, kwargs, message):
    out, config = tmp_path / "run", resolve()
    run_study(Toy(), config, out, say=lambda _: None)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    study = Toy()
    with pytest.raises(RunError) as error:
        run_study(study, config, out, say=lambda _: None, **kwargs)
    assert str(error.value).startswith(message) and "\n" not in str(error.value) and study.calls == []
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_rerun_from_after_an_unfinished_stage_is_refused(tmp_path):
    out, config = tmp_path / "run", resolve()
    with pytest.raises(StageFailedError):
        run_study(Toy(fail_at="first"), config, out, say=lambda _: None)
    with pytest.raises(RunError, match="the stage before it, 'first', has not finished; --resume alone continues"):
        run_study(Toy(), config, out, resume=True, rerun_from="second", say=lambda _: None)

def test_an_earlier_run_is_never_deleted(tmp_path):
    out = tmp_path / "run"
    config = resolve()
    run_study(Toy(), config, out, say=lambda _: None)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RunError, match="holds an earlier run: --resume continues it, --overwrite moves it aside"):
        run_study(Toy(), config, out, say=lambda _: None)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(RunError, match=r"--resume: .* other settings \(epochs: 2 -> 4\)"):
        run_study(Toy(), dataclasses.replace(config, epochs=4), out, resume=True, say=lambda _: None)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    run_study(Toy(), dataclasses.replace(config, epochs=4), out, overwrite=True, say=lambda _: None)
    moved = list((out / "previous").iterdir())
    assert len(moved) == 1
    assert {p.relative_to(moved[0]): p.read_bytes() for p in moved[0].rglob("*") if p.is_file()} == before
    # A run refused while preparing its data leaves only its settings: the corrected rerun is not refused.
    class Refused(Toy):
        def prepare(self, ctx):
            raise RunError("--data: no such folder")

    with pytest.raises(RunError, match="no such folder"):
        run_study(Refused(), config, tmp_path / "refused", say=lambda _: None)
    assert run_study(Toy(), config, tmp_path / "refused", say=lambda _: None)["run"]["resumed_stages"] == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="is a file, not a folder"):
        StageStore(tmp_path / "file", {}, resume=False)


# ------------------------------------------------------------------------------------------------ command


def kd_keras(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kd_keras", *argv], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_command_line():
    done = kd_keras("--help")
    commands = ("run", "export", "latency", "zoo", "cache", "predict")
    assert done.returncode == 0 and all(c in done.stdout for c in commands)
    unknown = kd_keras("train")
    assert unknown.returncode == 2 and unknown.stderr.strip() == (
        "error: unknown command 'train'; commands: run, export, latency, zoo, cache, predict (kd-keras --help)")
    no_study = kd_keras("run", "ot")
    assert no_study.returncode == 2 and "unknown study 'ot'; studies: oct, dr, simclr, attention" in no_study.stderr
    printed = kd_keras("run", "oct", "--preset", "smoke", "--set", "student_objectives=[{name: hinton, alpha: 0.3}]",
                       "--epochs", "3", "--image-size", "48", "--print-config")
    assert printed.returncode == 0, printed.stderr
    import yaml

    values = yaml.safe_load(printed.stdout)
    assert values["study"] == "oct" and values["preset"] == "smoke" and values["image_size"] == 48
    assert values["student_epochs"] == 3 and values["teacher_epochs"] == 3  # the smoke preset's 1:1 ratio
    assert values["student_objectives"] == [{"name": "hinton", "alpha": 0.3}]
    bad = kd_keras("run", "oct", "--set", "student_objectives=[{name: hintn}]", "--print-config")
    # One line: TensorFlow's C++ start-up notes (which ignore TF_CPP_MIN_LOG_LEVEL) are kept off the terminal.
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith(
        "error: student_objectives: unknown objective 'hintn'; registered: attention_transfer, conditional")
    typo = kd_keras("run", "oct", "--set", "studnets=[a]")
    assert typo.returncode == 2 and "unknown setting 'studnets' (did you mean 'students'?)" in typo.stderr
    both = kd_keras("run", "oct", "--preset", "smoke", "--rerun-from", "evaluation", "--overwrite")
    assert both.returncode == 2 and both.stderr.strip().splitlines() == [
        "error: --rerun-from continues the run in --out; --overwrite would start anew: use one"]


# ------------------------------------------------------------------------------------------ data changed


class FileStudy(Study):
    """Stages over files: "fit" reads the training files, "score" the test files."""

    name, title = "toy", "files"
    config_class, presets = ToyConfig, PRESETS

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def prepare(self, ctx):
        return {part: sorted(str(p) for p in (self.root / part).iterdir()) for part in ("train", "test")}

    def fingerprint(self, ctx):
        from kd_keras.runner import fingerprint_files

        return {part: fingerprint_files(paths) for part, paths in ctx.data.items()}

    def stages(self, ctx):
        def fit(ctx):
            self.calls.append("fit")
            inner = ctx.stage("fit/epoch1", lambda: {"n": len(ctx.data["train"])})
            return {"n": inner["n"]}

        def score(ctx):
            self.calls.append("score")
            return {"n": len(ctx.data["test"]), "fit": ctx.outputs["fit"]["n"]}

        return [Stage("fit", fit, ("train",)), Stage("score", score, ("test",))]

    def results(self, ctx):
        return dict(ctx.outputs)


def test_resume_after_the_data_changed_computes_again_what_it_feeds(tmp_path):
    for part, count in (("train", 3), ("test", 2)):
        (tmp_path / part).mkdir()
        for i in range(count):
            (tmp_path / part / f"{i}.png").write_bytes(b"x" * (i + 1))
    out, config, lines = tmp_path / "run", resolve(), []
    run_study(FileStudy(tmp_path), config, out, say=lines.append)
    (tmp_path / "test" / "9.png").write_bytes(b"new")  # a test image added
    study = FileStudy(tmp_path)
    results = run_study(study, config, out, resume=True, say=lines.append)
    assert study.calls == ["score"] and results["score"] == {"n": 3, "fit": 3}  # the fit is still valid
    assert any("the data changed since this run started (test: 2 -> 3 files): computing again from stage 'score'"
               in line for line in lines)
    stale = [p for p in (out / "previous").iterdir() if p.name.endswith("-stale")]
    assert len(stale) == 1 and json.loads((stale[0] / "stages" / "score.json").read_text())["n"] == 2
    (tmp_path / "train" / "0.png").write_bytes(b"changed!")  # same count, other size: the fit is stale too
    study = FileStudy(tmp_path)
    run_study(study, config, out, resume=True, say=lines.append)
    assert study.calls == ["fit", "score"]
    assert "train: 3 files, some changed (size or time)" in lines[-2]
    again = FileStudy(tmp_path)
    run_study(again, config, out, resume=True, say=lines.append)
    assert again.calls == []  # nothing changed: everything read back


def test_a_full_disk_is_one_line_and_names_the_stage(tmp_path):
    import errno

    class Full(Toy):
        def stages(self, ctx):
            def run(ctx):
                raise OSError(errno.ENOSPC, "No space left on device", str(ctx.out / "models" / "x.keras"))

            return [Stage("write", run)]

    with pytest.raises(RunError, match=r"stage 'write': cannot write .*x.keras: No space left on device; free space"):
        run_study(Full(), resolve(), tmp_path / "run", say=lambda _: None)
