"""The one sentence each study's report writes on whether its paper's finding held (issue 21): computed from the
numbers, so a run where the finding fails says so. Hand-made result dicts, both outcomes per study; no training.
"""

from __future__ import annotations

from kd_keras.studies import attention_report, dr_report, simclr_report
from kd_keras.studies.dr_config import DRKDConfig


def _ci(estimate: float, half: float | None = None) -> dict:
    if half is None:
        return {"estimate": estimate, "low": float("nan"), "high": float("nan")}
    return {"estimate": estimate, "low": estimate - half, "high": estimate + half}


def _simclr(**aucs) -> dict:
    return {"test": {m: {"test": {"auc": auc}} for m, auc in aucs.items()},
            "split": {"labeled": 19, "pool": 77, "test": 324}}


def test_simclr_finding_held_when_every_method_beats_supervised():
    results = _simclr(supervised=_ci(0.80, 0.03), fixmatch=_ci(0.85, 0.03), mixmatch=_ci(0.83, 0.03),
                      teacher=_ci(0.95, 0.01), student=_ci(0.93, 0.02))
    found = simclr_report.finding(results)
    assert found["verdict"] == "held" and found["images"] == 324
    assert found["comparisons"]["student"]["ci_apart"] is True  # [0.91, 0.95] vs [0.77, 0.83]
    assert found["comparisons"]["mixmatch"]["ci_apart"] is False  # [0.80, 0.86] overlaps [0.77, 0.83]
    sentence = simclr_report.finding_sentence(results)
    # MixMatch is above only within the CIs: the sentence says so.
    assert ": held (in direction only where the 95% CIs overlap) on this run's 324 test images" in sentence
    assert "student 93.00 vs supervised 80.00 (above, 95% CIs apart)" in sentence
    assert "MixMatch 83.00 (above, 95% CIs overlap)" in sentence


def test_simclr_finding_fails_and_says_so():
    # The student below supervised, MixMatch below chance (the demo's 18.6): the finding did not hold.
    results = _simclr(supervised=_ci(0.993, 0.02), fixmatch=_ci(0.843, 0.1), mixmatch=_ci(0.186, 0.1),
                      student=_ci(0.99, 0.01))
    assert simclr_report.finding(results)["verdict"] == "did not hold"
    sentence = simclr_report.finding_sentence(results)
    assert ": did not hold on" in sentence and "(not above" in sentence and ": held" not in sentence
    # Only part of it: the student above supervised, the two baselines not.
    results["test"]["student"]["test"]["auc"] = _ci(0.999, 0.001)
    assert simclr_report.finding(results)["verdict"] == "held in part"
    # An equal AUC is not "above" (a perfect supervised model leaves nothing to beat).
    results = _simclr(supervised=1.0, student=1.0)
    assert simclr_report.finding(results)["verdict"] == "did not hold"
    assert "no CIs" in simclr_report.finding_sentence(results)


def test_simclr_finding_without_supervised_baseline_is_not_tested():
    results = _simclr(fixmatch=0.9, student=0.95)
    assert simclr_report.finding(results)["verdict"] == "not tested"
    assert "not tested" in simclr_report.finding_sentence(results)


def _attention(aucs: dict, repetitions: int = 1) -> dict:
    """Selected TL/AT runs: ``aucs[(size, student, method)]`` is one AUC (a CI dict) or one per repetition."""
    runs = []
    for (size, student, method), values in aucs.items():
        for rep, auc in enumerate(values if isinstance(values, list) else [values]):
            runs.append({"size": size, "fraction": size, "train": int(88 * size), "student": student,
                         "method": method, "beta": None if method == "tl" else 100.0, "repetition": rep,
                         "selected": True, "test": {"auc": auc}})
    return {"config": {"students": ["densenet40", "densenet121"], "train_fractions": [0.5, 1.0],
                       "train_sizes": []}, "runs": runs, "split": {"train": 88, "val": 8, "test": 324}}


def test_attention_finding_held_and_not_held_at_the_smallest_size():
    # AT above TL at the smallest size (0.5) for both students; below at the full size (not the claim).
    results = _attention({(0.5, "densenet40", "tl"): _ci(0.70, 0.04), (0.5, "densenet40", "at"): _ci(0.80, 0.04),
                          (0.5, "densenet121", "tl"): _ci(0.72, 0.05), (0.5, "densenet121", "at"): _ci(0.75, 0.05),
                          (1.0, "densenet40", "tl"): _ci(0.90), (1.0, "densenet40", "at"): _ci(0.85)})
    found = attention_report.finding(results)
    assert found["verdict"] == "held" and found["train"] == 44
    assert found["students"]["densenet40"]["ci_apart"] is True and found["students"]["densenet121"]["ci_apart"] is False
    sentence = attention_report.finding_sentence(results)
    assert ("smallest training size, 44 images, test AUC): held (in direction only where the 95% CIs overlap) on "
            "this run's 324 test images") in sentence
    assert "densenet40 AT 80.00 (beta 100) vs TL 70.00 (above, 95% CIs apart)" in sentence
    # TL above AT at the smallest size for one student: held in part; for both: did not hold.
    results["runs"][3]["test"]["auc"] = _ci(0.70, 0.05)
    assert attention_report.finding(results)["verdict"] == "held in part"
    results["runs"][1]["test"]["auc"] = _ci(0.70, 0.04)  # a tie is not "above"
    assert attention_report.finding(results)["verdict"] == "did not hold"
    sentence = attention_report.finding_sentence(results)
    assert ": did not hold on" in sentence and "(not above, 95% CIs overlap)" in sentence
    results["runs"][3]["test"]["auc"] = _ci(0.90, 0.01)  # densenet121 far above, CIs apart: no qualifier
    results["runs"][1]["test"]["auc"] = _ci(0.80, 0.01)
    assert ": held on this run's 324" in attention_report.finding_sentence(results)


def test_attention_finding_uses_the_mean_over_repetitions():
    results = _attention({(0.5, "densenet40", "tl"): [_ci(0.70, 0.1), _ci(0.80, 0.1)],
                          (0.5, "densenet40", "at"): [_ci(0.78, 0.1), _ci(0.74, 0.1)]})
    results["config"]["students"] = ["densenet40"]
    found = attention_report.finding(results)["students"]["densenet40"]
    assert (round(found["tl"], 6), round(found["at"], 6), found["above"]) == (0.75, 0.76, True)
    assert "mean of 2 repetitions" in attention_report.finding_sentence(results)


def _dr(means: dict[str, list[float]]) -> dict:
    """Two folds of 324 test images; ``means[student]`` is Base, KD, UL, KD+UL accuracy (AUC = accuracy + 0.1)."""
    summary, students = {}, {}
    for student, values in means.items():
        for variant, value in zip(("base", "kd", "ul", "kd_ul"), values, strict=True):
            summary[f"{student}/{variant}"] = {"accuracy": {"mean": value, "sd": 0.0},
                                               "auc": {"mean": value + 0.1, "sd": 0.0}}
            students[f"{student}/{variant}"] = {"metrics": {"accuracy": value, "auc": _ci(value + 0.1, 0.05)}}
    fold = {"test": 324, "teacher": {"metrics": {"auc": _ci(0.9, 0.03)}}, "students": students}
    return {"summary": summary, "folds": [fold, fold]}


def test_dr_finding_held_and_not_held_per_student():
    config = DRKDConfig(students=("simple10", "vgg16_d2"))
    results = _dr({"simple10": [0.6, 0.7, 0.8, 0.85], "vgg16_d2": [0.6, 0.65, 0.7, 0.75]})
    found = dr_report.finding(results, config)
    assert found["verdict"] == "held" and found["folds"] == 2 and found["test"] == [324]
    sentence = dr_report.finding_sentence(results, config)
    assert "mean over 2 fold(s) of 324 test images each): held on this run: in accuracy for every student" in sentence
    # VGG/2's +UL below +KD: the ordering fails for it only.
    results = _dr({"simple10": [0.6, 0.7, 0.8, 0.85], "vgg16_d2": [0.6, 0.75, 0.7, 0.8]})
    assert dr_report.finding(results, config)["verdict"] == "held in part"
    assert "in accuracy for Simple10, not for VGG/2; in AUC for Simple10, not for VGG/2" in (
        dr_report.finding_sentence(results, config))
    results = _dr({"simple10": [0.9, 0.7, 0.8, 0.85], "vgg16_d2": [0.6, 0.6, 0.7, 0.8]})  # a tie is not "<"
    assert dr_report.finding(results, config)["verdict"] == "did not hold"
    assert "did not hold on this run: in accuracy for no student" in dr_report.finding_sentence(results, config)
    # The per-fold CI table shows both folds' intervals.
    assert "70.00 [65.00, 75.00] / 70.00 [65.00, 75.00]" in dr_report.table_ci(results, config)


def test_dr_finding_without_every_variant_is_not_tested():
    config = DRKDConfig(students=("simple10",), variants=("base", "kd_ul"))
    results = _dr({"simple10": [0.6, 0.7, 0.8, 0.85]})
    assert dr_report.finding(results, config)["verdict"] == "not tested"
    assert "not tested" in dr_report.finding_sentence(results, config)


def test_test_only_patients_are_other_patients_with_other_images(tmp_path):
    from pathlib import Path

    from kd_keras.data.synthetic_fundus import SyntheticFundusConfig, generate_synthetic_fundus, test_only_fundus

    config = SyntheticFundusConfig(patients=4, image_size=64, seed=0)
    train_root = generate_synthetic_fundus(tmp_path / "train", config)
    extra = test_only_fundus(tmp_path / "test", SyntheticFundusConfig(patients=3, image_size=64, seed=0))
    assert len(extra) == 6 and len(set(extra.patients)) == 3
    assert all(p.startswith("test-") for p in extra.patients)  # no id shared with a training patient
    train_bytes = {p.read_bytes() for p in (train_root / "train").iterdir()}
    assert not {Path(p).read_bytes() for p in extra.paths} & train_bytes  # other images, not copies
    again = test_only_fundus(tmp_path / "again", SyntheticFundusConfig(patients=3, image_size=64, seed=0))
    assert [Path(p).read_bytes() for p in again.paths] == [Path(p).read_bytes() for p in extra.paths]
