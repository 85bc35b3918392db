"""Metrics against scikit-learn on fixed arrays; the clustered bootstrap against exact and simulated cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn import metrics as skm

from kd_keras.evaluation import (
    binary_auc,
    clustered_bootstrap,
    confusion_matrix,
    evaluate_predictions,
    probabilities_from_logits,
    roc_auc,
    roc_curve,
    sensitivity_specificity,
    threshold_for_sensitivity,
    weighted_f1,
)

RNG = np.random.default_rng(1234)
Y_BIN = RNG.integers(0, 2, 300)
# Rounded scores so that ties occur, which is where hand-written AUCs usually go wrong.
S_BIN = np.round(np.clip(0.35 * Y_BIN + RNG.normal(0.4, 0.25, 300), 0, 1), 1)
Y_MC = RNG.integers(0, 4, 200)
P_MC = probabilities_from_logits(RNG.normal(size=(200, 4)) + 1.5 * np.eye(4)[Y_MC])
Y_ML = RNG.integers(0, 2, (150, 5))
P_ML = np.clip(0.3 * Y_ML + RNG.uniform(0, 0.7, (150, 5)), 0, 1)


def test_binary_auc_matches_sklearn_with_ties():
    assert binary_auc(Y_BIN, S_BIN) == pytest.approx(skm.roc_auc_score(Y_BIN, S_BIN), abs=1e-12)


def test_multiclass_and_multilabel_auc_match_sklearn():
    assert roc_auc(Y_MC, P_MC, "multiclass") == pytest.approx(
        skm.roc_auc_score(Y_MC, P_MC, multi_class="ovr", average="macro"), abs=1e-12
    )
    assert roc_auc(Y_ML, P_ML, "multilabel") == pytest.approx(
        skm.roc_auc_score(Y_ML, P_ML, average="macro"), abs=1e-12
    )


def test_auc_undefined_with_one_class():
    assert np.isnan(binary_auc(np.ones(5), np.linspace(0, 1, 5)))


def test_confusion_sensitivity_specificity_f1_match_sklearn():
    y_pred = (S_BIN >= 0.5).astype(int)
    np.testing.assert_array_equal(confusion_matrix(Y_BIN, y_pred, 2), skm.confusion_matrix(Y_BIN, y_pred))
    sens, spec = sensitivity_specificity(Y_BIN, y_pred)
    assert sens == pytest.approx(skm.recall_score(Y_BIN, y_pred, pos_label=1))
    assert spec == pytest.approx(skm.recall_score(Y_BIN, y_pred, pos_label=0))
    mc_pred = P_MC.argmax(1)
    assert weighted_f1(Y_MC, mc_pred) == pytest.approx(skm.f1_score(Y_MC, mc_pred, average="weighted"))


def test_roc_curve_matches_sklearn():
    fpr, tpr, _ = roc_curve(Y_BIN, S_BIN)
    sk_fpr, sk_tpr, _ = skm.roc_curve(Y_BIN, S_BIN, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(Y_BIN, S_BIN))


def test_probabilities_from_logits_single_and_two_logit_heads_agree():
    z = np.array([[-2.0], [0.0], [3.0]])
    two = probabilities_from_logits(np.concatenate([np.zeros_like(z), z], axis=1))
    np.testing.assert_allclose(probabilities_from_logits(z), two[:, 1])


def test_threshold_for_sensitivity_reaches_target():
    t = threshold_for_sensitivity(Y_BIN, S_BIN, 0.9)
    sens, _ = sensitivity_specificity(Y_BIN, (S_BIN >= t).astype(int))
    assert sens >= 0.9
    # The next higher distinct score would miss the target: the threshold is the highest that works.
    higher = S_BIN[S_BIN > t]
    if higher.size:
        assert sensitivity_specificity(Y_BIN, (S_BIN >= higher.min()).astype(int))[0] < 0.9


def test_bootstrap_matches_exact_enumeration():
    """Two clusters, A = two correct predictions, B = one wrong. Resampling 2 clusters gives AA (p=1/4, acc 1),
    AB or BA (p=1/2, acc 2/3) and BB (p=1/4, acc 0): the replicate distribution must match those weights."""
    correct = np.array([1.0, 1.0, 0.0])
    clusters = np.array(["A", "A", "B"])
    n_boot = 4000
    ci = clustered_bootstrap(np.mean, (correct,), clusters, n_boot=n_boot, seed=3)
    assert ci.estimate == pytest.approx(2 / 3)
    assert ci.low == 0.0 and ci.high == 1.0  # 2.5% and 97.5% quantiles fall in the BB and AA atoms
    # Re-draw the same replicates to check the atom frequencies.
    rng = np.random.default_rng(3)
    seen = {0.0: 0, 2 / 3: 0, 1.0: 0}
    for _ in range(n_boot):
        picked = rng.integers(0, 2, size=2)
        vals = np.concatenate([correct[:2] if c == 0 else correct[2:] for c in picked])
        seen[min(seen, key=lambda k: abs(k - vals.mean()))] += 1
    assert seen[0.0] / n_boot == pytest.approx(0.25, abs=0.03)
    assert seen[2 / 3] / n_boot == pytest.approx(0.5, abs=0.03)


def test_clustered_ci_is_wider_than_naive_on_correlated_data():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(30), 20)
    effect = rng.normal(0, 1, 30)[clusters]  # strong within-cluster correlation
    x = (effect + rng.normal(0, 0.3, clusters.size) > 0).astype(float)
    naive = clustered_bootstrap(np.mean, (x,), None, n_boot=500, seed=1)
    clustered = clustered_bootstrap(np.mean, (x,), clusters, n_boot=500, seed=1)
    assert (clustered.high - clustered.low) > 2 * (naive.high - naive.low)


def test_bootstrap_auc_ci_covers_known_auc():
    """Binormal scores with a shared cluster effect: score = d*y + c + e, c ~ N(0, s^2) per cluster,
    e ~ N(0, 1). A positive and a negative from different clusters differ by N(d, 2(1 + s^2)), so the population
    AUC is Phi(d / sqrt(2 (1 + s^2))) (same-cluster pairs, 1 in 40 here, shift it negligibly)."""
    d, s = 1.0, 0.5
    true_auc = norm.cdf(d / np.sqrt(2 * (1 + s**2)))
    hits, trials = 0, 60
    for t in range(trials):
        rng = np.random.default_rng(100 + t)
        clusters = np.repeat(np.arange(40), 10)
        y = rng.integers(0, 2, clusters.size)
        scores = d * y + rng.normal(0, s, 40)[clusters] + rng.normal(0, 1, clusters.size)
        ci = clustered_bootstrap(binary_auc, (y, scores), clusters, n_boot=200, seed=t)
        hits += ci.low <= true_auc <= ci.high
    # Nominal 95%; with 60 trials anything from ~85% up is consistent, far below means a broken interval.
    assert hits / trials >= 0.85


def test_evaluate_predictions_binary_report():
    out = evaluate_predictions(Y_BIN, S_BIN, clusters=np.arange(300) // 3, n_boot=100)
    y_pred = (S_BIN >= 0.5).astype(int)
    assert out["auc"]["estimate"] == pytest.approx(skm.roc_auc_score(Y_BIN, S_BIN))
    assert out["sensitivity"]["estimate"] == pytest.approx(skm.recall_score(Y_BIN, y_pred))
    assert out["accuracy"]["estimate"] == pytest.approx(skm.accuracy_score(Y_BIN, y_pred))
    assert out["sensitivity"]["low"] <= out["sensitivity"]["estimate"] <= out["sensitivity"]["high"]
    assert out["clusters"] == 100
    mc = evaluate_predictions(Y_MC, P_MC, task="multiclass", n_boot=0)
    assert mc["accuracy"]["estimate"] == pytest.approx(skm.accuracy_score(Y_MC, P_MC.argmax(1)))


def test_report_helpers(tmp_path):
    import json

    from kd_keras.evaluation.report import environment, format_ci, markdown_table, write_json

    assert format_ci({"estimate": 0.94, "low": 0.9144, "high": 0.9673}) == "94.00 [91.44, 96.73]"
    assert format_ci(float("nan")) == "n/a"
    table = markdown_table(["a", "b"], [[1, 2]])
    assert table.splitlines()[2] == "| 1 | 2 |"
    path = write_json(tmp_path / "r.json", {"x": np.float32(0.5), "y": [float("nan")], "msg": "NaN loss"})
    assert json.loads(path.read_text()) == {"x": 0.5, "y": [None], "msg": "NaN loss"}
    assert "keras" in environment()["packages"]


def test_plots_write_png(tmp_path):
    from kd_keras.evaluation.plots import plot_accuracy_vs_fraction, plot_roc_curves, plot_time_vs_accuracy

    pts = [{"name": "a", "family": "f", "seconds_per_volume": 0.1, "accuracy": 0.9, "low": 0.85, "high": 0.93},
           {"name": "t", "family": "teacher", "seconds_per_volume": 0.5, "accuracy": 0.95}]
    for path in (
        plot_time_vs_accuracy(pts, tmp_path / "t.png"),
        plot_accuracy_vs_fraction({"a": [{"fraction": 0.0, "accuracy": 0.8}, {"fraction": 1.0, "accuracy": 0.9}]},
                                  tmp_path / "f.png"),
        plot_roc_curves({"a": (Y_BIN, S_BIN)}, tmp_path / "r.png"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
