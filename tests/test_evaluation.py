"""Metrics against scikit-learn on fixed arrays; their vectorised replicate twins against the scikit-learn-backed
metrics on random cases (hypothesis: ties, empty and one-class replicates); the fast bootstrap path against the
per-replicate one; the clustered bootstrap against exact and simulated cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from sklearn import metrics as skm

from kd_keras.evaluation import (
    accuracy,
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
from kd_keras.evaluation.bootstrap import clustered_bootstrap_many
from kd_keras.evaluation.replicate_metrics import (
    accuracy_per_replicate,
    binary_auc_per_replicate,
    roc_auc_per_replicate,
    sensitivity_specificity_per_replicate,
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
    # The replicates the bootstrap itself evaluates: whole clusters, so AA has 4 examples, AB 3 and BB 2 (resampling
    # examples instead would always give 3).
    replicates = []
    clustered_bootstrap(lambda x: replicates.append(x.copy()) or float(np.mean(x)), (correct,), clusters,
                        n_boot=n_boot, seed=3)
    replicates = replicates[1:]  # the first call is the point estimate on the data
    assert len(replicates) == n_boot
    sizes = np.array([len(r) for r in replicates])
    assert set(sizes.tolist()) == {2, 3, 4}
    assert all(r.mean() == {4: 1.0, 3: 2 / 3, 2: 0.0}[len(r)] for r in replicates)
    assert np.mean(sizes == 2) == pytest.approx(0.25, abs=0.03)
    assert np.mean(sizes == 3) == pytest.approx(0.5, abs=0.03)


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


# --- Vectorised replicate metrics (kd_keras.evaluation.replicate_metrics) against the scikit-learn-backed ones. ---

# No example database in the shared checkout; no deadline (the machine is shared and its load varies).
FAST = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
# Few distinct scores so that ties (within and across classes) are the rule.
SCORE_GRID = st.sampled_from([0.0, 0.2, 0.5, 0.5000000000000001, 0.8, 1.0])


@st.composite
def replicate_case(draw, columns: int = 0, classes: int = 2):
    """(y, scores, counts): n examples, scores (n,) or (n, columns) on SCORE_GRID, and 1-3 replicates of
    multiplicities 0-3, plus rows that keep only one class or nothing, as a bootstrap of a small set does."""
    n = draw(st.integers(1, 12))
    shape = (n, columns) if columns else (n,)
    if classes == 0:  # multi-label: a multi-hot matrix
        y = np.array(draw(st.lists(st.integers(0, 1), min_size=n * columns, max_size=n * columns))).reshape(shape)
    else:
        y = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)))
    scores = np.array(draw(st.lists(SCORE_GRID, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))))
    rows = draw(st.integers(1, 3))
    counts = np.array(draw(st.lists(st.integers(0, 3), min_size=rows * n, max_size=rows * n)), float)
    counts = counts.reshape(rows, n)
    first_class = (y if y.ndim == 1 else y[:, 0]) == (y if y.ndim == 1 else y[:, 0])[0]
    counts = np.vstack([counts, counts[0] * first_class, np.zeros(n)])  # one-class and empty replicates
    return y, scores.reshape(shape), counts


def _expanded(counts_row: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The replicate itself: each example repeated as often as counted."""
    idx = np.repeat(np.arange(len(counts_row)), counts_row.astype(int))
    return tuple(a[idx] for a in arrays)


def _assert_same(fast: np.ndarray, reference: list[float]) -> None:
    np.testing.assert_allclose(fast, np.array(reference, float), rtol=0, atol=1e-12, equal_nan=True)


@FAST
@given(replicate_case())
def test_binary_auc_per_replicate_equals_sklearn(case):
    y, scores, counts = case
    fast = binary_auc_per_replicate(y, scores, counts)
    _assert_same(fast, [binary_auc(*_expanded(row, y, scores)) for row in counts])
    # The one-class and empty rows are NaN, as binary_auc (scikit-learn would raise).
    assert np.isnan(fast[-1]) and (np.isnan(fast[-2]) or not np.all(y == y[0]))
    # Against roc_auc_score itself wherever both classes are present.
    for row, value in zip(counts, fast, strict=True):
        y_rep, s_rep = _expanded(row, y, scores)
        if 0 < y_rep.sum() < y_rep.size:
            assert value == pytest.approx(skm.roc_auc_score(y_rep, s_rep), abs=1e-12)


@FAST
@given(replicate_case())
def test_accuracy_sensitivity_specificity_per_replicate_equal_sklearn(case):
    y, scores, counts = case
    y_pred = scores >= 0.5
    _assert_same(accuracy_per_replicate(y, y_pred, counts), [accuracy(*_expanded(r, y, y_pred)) for r in counts])
    sens, spec = sensitivity_specificity_per_replicate(y, y_pred, counts)
    reference = [sensitivity_specificity(*_expanded(r, y, y_pred)) for r in counts]
    _assert_same(sens, [r[0] for r in reference])
    _assert_same(spec, [r[1] for r in reference])


@FAST
@given(replicate_case(columns=3, classes=3))
def test_multiclass_auc_and_accuracy_per_replicate_equal_sklearn(case):
    y, scores, counts = case
    _assert_same(roc_auc_per_replicate(y, scores, counts, "multiclass"),
                 [roc_auc(*_expanded(r, y, scores), "multiclass") for r in counts])
    _assert_same(accuracy_per_replicate(y, scores.argmax(1), counts),
                 [accuracy(*_expanded(r, y, scores.argmax(1))) for r in counts])
    # A two-column probability matrix: the binary AUC of column 1.
    y2 = (y == 1).astype(int)
    _assert_same(roc_auc_per_replicate(y2, scores[:, :2], counts, "binary"),
                 [roc_auc(*_expanded(r, y2, scores[:, :2]), "binary") for r in counts])


@FAST
@given(replicate_case(columns=3, classes=0))
def test_multilabel_auc_and_accuracy_per_replicate_equal_sklearn(case):
    y, scores, counts = case
    _assert_same(roc_auc_per_replicate(y, scores, counts, "multilabel"),
                 [roc_auc(*_expanded(r, y, scores), "multilabel") for r in counts])
    y_pred = scores >= 0.5
    _assert_same(accuracy_per_replicate(y, y_pred, counts), [accuracy(*_expanded(r, y, y_pred)) for r in counts])


def test_replicate_metrics_reject_misshapen_counts_and_unknown_task():
    with pytest.raises(ValueError, match="replicates, 3"):
        binary_auc_per_replicate(np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3]), np.ones(3))
    with pytest.raises(ValueError, match="task"):
        roc_auc_per_replicate(np.array([0, 1]), np.eye(2), np.ones((1, 2)), "ranking")


# Few positives in few clusters: many replicates lack a class, so NaN replicates are left out of the interval.
RARE_CLUSTERS = np.repeat(np.arange(25), 4)
RARE_Y = np.isin(RARE_CLUSTERS, [3, 11]).astype(int) * RNG.integers(0, 2, 100)
RARE_Y[12] = 1
RARE_S = np.round(np.clip(0.3 * RARE_Y + RNG.normal(0.4, 0.2, 100), 0, 1), 1)


def _assert_same_interval(fast, slow) -> None:
    assert fast.replicates == slow.replicates
    for field in ("estimate", "low", "high"):
        assert getattr(fast, field) == pytest.approx(getattr(slow, field), abs=1e-12, nan_ok=True)


@pytest.mark.parametrize("clusters", [None, RARE_CLUSTERS], ids=["examples", "clusters"])
def test_fast_bootstrap_equals_per_replicate_sklearn(clusters):
    """The twin of binary_auc / accuracy is found by itself; a lambda around the same metric has none and takes
    the per-replicate scikit-learn path. Same draws, so the same intervals, NaN replicates included."""
    fast = clustered_bootstrap(binary_auc, (RARE_Y, RARE_S), clusters, n_boot=120, seed=5)
    slow = clustered_bootstrap(lambda y, s: binary_auc(y, s), (RARE_Y, RARE_S), clusters, n_boot=120, seed=5)
    _assert_same_interval(fast, slow)
    if clusters is not None:
        assert 0 < fast.replicates < 120  # some replicates had no positive
    y_pred = (RARE_S >= 0.5).astype(int)
    _assert_same_interval(clustered_bootstrap(accuracy, (RARE_Y, y_pred), clusters, n_boot=120, seed=5),
                          clustered_bootstrap(lambda a, b: accuracy(a, b), (RARE_Y, y_pred), clusters, n_boot=120,
                                              seed=5))


def test_fast_bootstrap_in_blocks_equals_one_block(monkeypatch):
    import kd_keras.evaluation.bootstrap as bootstrap

    whole = clustered_bootstrap(binary_auc, (RARE_Y, RARE_S), RARE_CLUSTERS, n_boot=97, seed=2)
    monkeypatch.setattr(bootstrap, "_BLOCK_ELEMENTS", 7 * len(RARE_Y))  # blocks of 7 replicates, the last short
    assert clustered_bootstrap(binary_auc, (RARE_Y, RARE_S), RARE_CLUSTERS, n_boot=97, seed=2) == whole


def test_bootstrap_many_equals_one_at_a_time_and_checks_clusters():
    def positive_rate(y, scores):  # no twin: the per-replicate path, next to the fast one
        return float(np.mean(y))

    y_pred = (RARE_S >= 0.5).astype(int)
    many = clustered_bootstrap_many({"auc": binary_auc, "positives": positive_rate}, (RARE_Y, RARE_S), RARE_CLUSTERS,
                                    n_boot=200, seed=4)
    assert many["auc"] == clustered_bootstrap(binary_auc, (RARE_Y, RARE_S), RARE_CLUSTERS, n_boot=200, seed=4)
    assert many["positives"] == clustered_bootstrap(positive_rate, (RARE_Y, RARE_S), RARE_CLUSTERS, n_boot=200,
                                                     seed=4)
    assert many["positives"].estimate == pytest.approx(RARE_Y.mean())
    with pytest.raises(ValueError, match="clusters has 3 entries"):
        clustered_bootstrap(accuracy, (RARE_Y, y_pred), RARE_CLUSTERS[:3])
    empty = clustered_bootstrap(binary_auc, (np.zeros(0), np.zeros(0)), n_boot=10)
    assert np.isnan(empty.estimate) and np.isnan(empty.low) and empty.replicates == 0


def _per_replicate_reference(y, p, clusters, metrics: dict, n_boot: int, seed: int) -> dict:
    """evaluate_predictions' intervals the slow way: each metric through scikit-learn once per replicate."""
    return {
        name: clustered_bootstrap(lambda *a, m=metric: m(*a), (y, p), clusters, n_boot=n_boot, seed=seed).as_dict()
        for name, metric in metrics.items()
    }


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_evaluate_predictions_intervals_equal_per_replicate_sklearn(task):
    t = 0.45
    if task == "binary":
        y, p, clusters = RARE_Y, RARE_S, RARE_CLUSTERS
        metrics = {"accuracy": lambda y, p: skm.accuracy_score(y, p >= t), "auc": binary_auc,
                   "sensitivity": lambda y, p: sensitivity_specificity(y, p >= t)[0],
                   "specificity": lambda y, p: sensitivity_specificity(y, p >= t)[1]}
    elif task == "multiclass":
        y, p, clusters = Y_MC, P_MC, np.arange(200) // 8
        metrics = {"accuracy": lambda y, p: skm.accuracy_score(y, p.argmax(1)),
                   "auc": lambda y, p: roc_auc(y, p, "multiclass")}
    else:
        y, p, clusters = Y_ML, P_ML, np.arange(150) // 5
        metrics = {"accuracy": lambda y, p: 1 - skm.hamming_loss(y, (p >= t).astype(int)),
                   "auc": lambda y, p: roc_auc(y, p, "multilabel")}
    out = evaluate_predictions(y, p, clusters, task=task, threshold=t, n_boot=60, seed=9)
    for name, reference in _per_replicate_reference(y, p, clusters, metrics, 60, 9).items():
        assert out[name]["replicates"] == reference["replicates"], name
        for field in ("estimate", "low", "high"):
            assert out[name][field] == pytest.approx(reference[field], abs=1e-12, nan_ok=True), (name, field)
