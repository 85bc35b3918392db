"""Every objective of kd_keras.engine.losses against values computed independently in NumPy (loops over
examples, classes and planes; closed forms where they exist), never with the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from kd_keras.engine import losses

RTOL = 1e-5


def softmax(z, axis=-1):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def kl(p, q):
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0))


def cross_entropy(p, q):
    return float(-sum(pi * math.log(qi) for pi, qi in zip(p, q, strict=True) if pi > 0))


def close(actual, expected, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected, np.float64), rtol=RTOL, atol=atol)


# ---- hard labels -------------------------------------------------------------------------------------------


def test_hard_label_multiclass_matches_closed_form():
    logits = np.array([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0], [3.0, -1.0, 0.0]], np.float32)
    labels = np.array([1, 2, 0])
    expected = [-math.log(softmax(row)[y]) for row, y in zip(logits, labels, strict=True)]
    close(losses.hard_label_cross_entropy(labels, logits), expected)
    # Hand value: uniform logits over 3 classes -> log 3.
    assert abs(expected[1] - math.log(3)) < 1e-12


def test_hard_label_binary_one_logit_is_sigmoid_bce_and_equals_two_logits_0_z():
    z = np.array([[0.3], [-1.2], [2.0]], np.float32)
    y = np.array([1.0, 0.0, 0.0], np.float32)
    expected = [
        -(t * math.log(sigmoid(v)) + (1 - t) * math.log(1 - sigmoid(v)))
        for v, t in zip(z[:, 0], y, strict=True)
    ]
    close(losses.hard_label_cross_entropy(y, z), expected)
    two = np.concatenate([np.zeros_like(z), z], axis=1)
    close(losses.hard_label_cross_entropy(y.astype(np.int32), two), expected)


def test_hard_label_multilabel_averages_per_label_bce():
    z = np.array([[0.5, -0.5, 2.0], [-1.0, 0.0, 1.0]], np.float32)
    y = np.array([[1, 0, 1], [0, 1, 1]], np.float32)
    expected = []
    for zr, yr in zip(z, y, strict=True):
        terms = [
            -(t * math.log(sigmoid(v)) + (1 - t) * math.log(1 - sigmoid(v)))
            for v, t in zip(zr, yr, strict=True)
        ]
        expected.append(sum(terms) / len(terms))
    close(losses.hard_label_cross_entropy(y, z, task="multilabel"), expected)


def test_task_errors_are_clear():
    with pytest.raises(ValueError, match="binary.*one logit"):
        losses.hard_label_cross_entropy(np.array([1]), np.zeros((1, 2), np.float32), task="binary")
    with pytest.raises(ValueError, match="task must be one of"):
        losses.resolve_task("regression", tf.zeros((1, 2)))


# ---- Hinton soft targets -----------------------------------------------------------------------------------


def test_hinton_hand_value():
    # Teacher logits [ln 3, 0] -> probabilities [3/4, 1/4]; student [0, 0] -> [1/2, 1/2]; T = 1.
    teacher = np.array([[math.log(3.0), 0.0]], np.float32)
    student = np.zeros((1, 2), np.float32)
    kl_hand = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    ce_hand = math.log(2.0)  # label 0 under a uniform student
    value = losses.hinton_loss(np.array([0]), teacher, student, alpha=0.3, temperature=1.0)
    close(value, [0.3 * ce_hand + 0.7 * kl_hand])


def test_hinton_multiclass_with_temperature_and_mask():
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(4, 5)).astype(np.float32) * 3, rng.normal(size=(4, 5)).astype(np.float32)
    y, labeled = np.array([0, 3, 1, 4]), np.array([1, 0, 1, 0], np.float32)
    alpha, temp = 0.2, 4.0
    expected = []
    for i in range(4):
        ce = -math.log(softmax(s[i])[y[i]]) * labeled[i]
        expected.append(alpha * ce + (1 - alpha) * temp**2 * kl(softmax(t[i] / temp), softmax(s[i] / temp)))
    close(losses.hinton_loss(y, t, s, alpha, temp, labeled=labeled), expected)
    close(
        losses.soft_target_kl(t, s, temp),
        [temp**2 * kl(softmax(t[i] / temp), softmax(s[i] / temp)) for i in range(4)],
    )


def test_hinton_binary_one_logit_is_bernoulli_kl():
    z_t, z_s = np.array([[1.5], [-0.7]], np.float32), np.array([[0.2], [0.9]], np.float32)
    temp = 2.0
    expected = []
    for a, b in zip(z_t[:, 0], z_s[:, 0], strict=True):
        p, q = sigmoid(a / temp), sigmoid(b / temp)
        expected.append(temp**2 * (p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))))
    close(losses.soft_target_kl(z_t, z_s, temp), expected)
    # Same as the two-logit head [0, z].
    as_two = lambda z: np.concatenate([np.zeros_like(z), z], 1)  # noqa: E731
    close(losses.soft_target_kl(as_two(z_t), as_two(z_s), temp), expected)


def test_hinton_multilabel_averages_bernoulli_kl_over_labels():
    z_t = np.array([[1.0, -2.0, 0.5]], np.float32)
    z_s = np.array([[0.0, 0.3, -0.4]], np.float32)
    temp = 3.0
    terms = []
    for a, b in zip(z_t[0], z_s[0], strict=True):
        p, q = sigmoid(a / temp), sigmoid(b / temp)
        terms.append(p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))
    close(losses.soft_target_kl(z_t, z_s, temp, task="multilabel"), [temp**2 * np.mean(terms)])


def test_soft_target_student_teacher_is_ce_plus_alpha_soft():
    t = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)
    s = np.array([[0.5, 0.5], [1.0, -1.0]], np.float32)
    y, labeled = np.array([0, 1]), np.array([1.0, 0.0], np.float32)
    alpha, temp = 1.5, 3.0
    expected = [
        -math.log(softmax(s[0])[0]) + alpha * temp**2 * kl(softmax(t[0] / temp), softmax(s[0] / temp)),
        alpha * temp**2 * kl(softmax(t[1] / temp), softmax(s[1] / temp)),
    ]
    close(losses.soft_target_loss(y, labeled, t, s, alpha, temp, form="hard_plus_alpha_soft"), expected)
    with pytest.raises(ValueError, match="form must be one of"):
        losses.soft_target_loss(y, labeled, t, s, alpha, temp, form="mean")


# ---- conditional distillation (000 eq. 2) ------------------------------------------------------------------


def test_conditional_distillation_soft_where_teacher_right_hard_where_wrong_soft_on_unlabeled():
    t = np.array([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 1.0, 2.0]], np.float32)
    s = np.array([[0.1, 0.2, 0.3], [1.0, 0.0, -1.0], [0.5, 0.5, 0.0]], np.float32)
    y = np.array([0, 2, 0])  # example 0: teacher right; example 1: teacher wrong; example 2: unlabeled
    labeled = np.array([1.0, 1.0, 0.0], np.float32)
    expected = [
        cross_entropy(softmax(t[0]), softmax(s[0])),
        -math.log(softmax(s[1])[2]),
        cross_entropy(softmax(t[2]), softmax(s[2])),
    ]
    close(losses.conditional_distillation_loss(y, labeled, t, s), expected)
    # With a temperature the soft terms use softmax(./T) and are scaled by T^2; the hard term is unchanged.
    temp = 2.0
    expected_t = [
        temp**2 * cross_entropy(softmax(t[0] / temp), softmax(s[0] / temp)),
        expected[1],
        temp**2 * cross_entropy(softmax(t[2] / temp), softmax(s[2] / temp)),
    ]
    close(losses.conditional_distillation_loss(y, labeled, t, s, temperature=temp), expected_t)


def test_conditional_distillation_binary_one_logit():
    z_t = np.array([[2.0], [2.0]], np.float32)  # teacher says positive (p = sigmoid(2))
    z_s = np.array([[0.5], [0.5]], np.float32)
    y = np.array([1.0, 0.0], np.float32)  # right for the first, wrong for the second
    p, q = sigmoid(2.0), sigmoid(0.5)
    expected = [-(p * math.log(q) + (1 - p) * math.log(1 - q)), -math.log(1 - q)]
    close(losses.conditional_distillation_loss(y, np.ones(2, np.float32), z_t, z_s), expected)


# ---- pseudo-labels (002, 003) ------------------------------------------------------------------------------


def test_pseudo_labels_argmax_on_unlabeled_expert_labels_on_labeled():
    t = np.array([[0.1, 2.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    s = np.array([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [2.0, 0.0, 0.0]], np.float32)
    y = np.array([0, 0, 2])
    labeled = np.array([1.0, 0.0, 0.0], np.float32)
    expected = [
        -math.log(softmax(s[0])[0]),  # expert label 0 (teacher would say 1)
        -math.log(softmax(s[1])[0]),  # teacher argmax 0
        -math.log(softmax(s[2])[2]),
    ]  # teacher argmax 2
    close(losses.pseudo_label_loss(y, labeled, t, s), expected)
    # Soft pseudo-labels: the teacher's probabilities instead of its argmax.
    soft = [
        expected[0],
        cross_entropy(softmax(t[1]), softmax(s[1])),
        cross_entropy(softmax(t[2]), softmax(s[2])),
    ]
    close(losses.pseudo_label_loss(y, labeled, t, s, soft=True), soft)
    # min_confidence: example 2's teacher top probability is softmax([0,0,1])[2] = 0.576 < 0.9 -> weight 0.
    close(losses.pseudo_label_loss(y, labeled, t, s, min_confidence=0.9), [expected[0], expected[1], 0.0])


def test_pseudo_labels_binary_threshold_half():
    z_t = np.array([[0.4], [-0.1], [3.0]], np.float32)  # sigmoid 0.599 -> 1, 0.475 -> 0
    z_s = np.array([[0.0], [1.0], [-2.0]], np.float32)
    labeled = np.array([0.0, 0.0, 1.0], np.float32)
    y = np.array([0.0, 0.0, 0.0], np.float32)  # expert label 0 for the labeled one, though the teacher says 1
    expected = [-math.log(sigmoid(0.0)), -math.log(1 - sigmoid(1.0)), -math.log(1 - sigmoid(-2.0))]
    close(losses.pseudo_label_loss(y, labeled, z_t, z_s), expected)


# ---- attention transfer (004) ------------------------------------------------------------------------------


def at_paper_reference(s, t):
    """004 eq. 1 with loops: per-plane L2-normalised maps, L2 norm of the difference, mean over planes."""
    out = []
    for b in range(s.shape[0]):
        total = 0.0
        for c in range(s.shape[-1]):
            qs, qt = s[b, :, :, c].ravel().astype(np.float64), t[b, :, :, c].ravel().astype(np.float64)
            total += np.linalg.norm(qs / np.linalg.norm(qs) - qt / np.linalg.norm(qt))
        out.append(total / s.shape[-1])
    return out


def at_zagoruyko_reference(s, t):
    """The authors' PyTorch code, written for NCHW: at(x) = normalize(x.pow(2).mean(1)); (at_s-at_t)^2.mean().
    Returns the batch value (their .mean() runs over batch and positions)."""

    def at(x):
        x = np.transpose(x, (0, 3, 1, 2)).astype(np.float64)  # NHWC -> NCHW
        a = (x**2).mean(axis=1).reshape(x.shape[0], -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return float(((at(s) - at(t)) ** 2).mean())


def test_attention_transfer_paper_variant():
    rng = np.random.default_rng(1)
    s = np.abs(rng.normal(size=(3, 4, 4, 5))).astype(np.float32)
    t = np.abs(rng.normal(size=(3, 4, 4, 5))).astype(np.float32)
    close(losses.attention_transfer_loss(s, t, "paper"), at_paper_reference(s, t))
    close(losses.attention_transfer_loss(s, s, "paper"), [0.0] * 3, atol=1e-5)
    # Scale invariance per plane: a teacher plane multiplied by 7 gives the same loss.
    close(losses.attention_transfer_loss(s, t * 7.0, "paper"), at_paper_reference(s, t))


def test_attention_transfer_zagoruyko_variant_matches_authors_formula_and_allows_channel_mismatch():
    rng = np.random.default_rng(2)
    s = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    t = rng.normal(size=(2, 4, 4, 8)).astype(np.float32)
    per_example = losses.attention_transfer_loss(s, t, "zagoruyko")
    close(float(np.mean(per_example)), at_zagoruyko_reference(s, t))


def test_attention_transfer_pools_the_larger_map_and_rejects_mismatches():
    rng = np.random.default_rng(3)
    s = np.abs(rng.normal(size=(2, 8, 8, 4))).astype(np.float32)
    t = np.abs(rng.normal(size=(2, 4, 4, 4))).astype(np.float32)
    pooled = s.reshape(2, 4, 2, 4, 2, 4).mean(axis=(2, 4))  # 2x2 average pooling by hand
    close(losses.attention_transfer_loss(s, t, "paper"), at_paper_reference(pooled, t))
    with pytest.raises(ValueError, match="5 channels, teacher 4"):
        losses.attention_transfer_loss(np.ones((1, 4, 4, 5), np.float32), t[:1], "paper")
    with pytest.raises(ValueError, match="cannot be matched by pooling"):
        losses.attention_transfer_loss(np.ones((1, 6, 6, 4), np.float32), t[:1], "paper")


def test_attention_transfer_gradient_is_finite_when_maps_coincide():
    x = tf.Variable(np.abs(np.random.default_rng(4).normal(size=(1, 4, 4, 2))).astype(np.float32))
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(losses.attention_transfer_loss(x, tf.constant(x.numpy()), "paper"))
    assert np.all(np.isfinite(tape.gradient(value, x).numpy()))


# ---- FitNets hints -----------------------------------------------------------------------------------------


def test_hint_loss_is_per_example_mean_squared_error():
    rng = np.random.default_rng(5)
    r, t = rng.normal(size=(2, 2, 2, 3)).astype(np.float32), rng.normal(size=(2, 2, 2, 3)).astype(np.float32)
    expected = [
        sum((a - b) ** 2 for a, b in zip(r[i].ravel(), t[i].ravel(), strict=True)) / 12 for i in range(2)
    ]
    close(losses.hint_loss(r, t), expected)


# ---- SimCLR NT-Xent ----------------------------------------------------------------------------------------


def nt_xent_reference(z1, z2, tau):
    """SimCLR's L with explicit loops over the 2N anchors; returns per-image (l(2k-1,2k) + l(2k,2k-1)) / 2."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)

    def ell(i, j):
        denominator = sum(math.exp(z[i] @ z[k] / tau) for k in range(2 * n) if k != i)
        return -math.log(math.exp(z[i] @ z[j] / tau) / denominator)

    return [(ell(k, k + n) + ell(k + n, k)) / 2 for k in range(n)]


def test_nt_xent_matches_loop_reference():
    rng = np.random.default_rng(6)
    z1, z2 = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    close(losses.nt_xent_loss(z1, z2, 0.5), nt_xent_reference(z1, z2, 0.5))


def test_nt_xent_local_slices_with_gathered_negatives_equal_global_loss():
    rng = np.random.default_rng(7)
    z1, z2 = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    reference = nt_xent_reference(z1, z2, 0.2)
    # A replica holding images 2..4 sees all 6 images' projections as candidates.
    local = losses.nt_xent_loss(z1[2:5], z2[2:5], 0.2, all_z1=z1, all_z2=z2, offset=2)
    close(local, reference[2:5])


# ---- FixMatch / MixMatch -----------------------------------------------------------------------------------


def test_fixmatch_loss():
    weak = np.array([[4.0, 0.0], [0.2, 0.0], [0.0, 1.0]], np.float32)
    strong = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]], np.float32)
    y, labeled = np.array([0, 0, 1]), np.array([0.0, 0.0, 1.0], np.float32)
    # Example 0: unlabeled, weak softmax top prob 0.982 >= 0.95 -> pseudo-label 0 on the strong view.
    # Example 1: unlabeled, top prob 0.55 < 0.95 -> 0. Example 2: labeled -> CE on the weak view.
    expected = [2.0 * -math.log(softmax(strong[0])[0]), 0.0, -math.log(softmax(weak[2])[1])]
    close(losses.fixmatch_loss(y, labeled, weak, strong, threshold=0.95, lambda_u=2.0), expected)


def test_sharpen_and_mixmatch_loss():
    p = np.array([[0.6, 0.3, 0.1]])
    powered = p**2
    close(losses.sharpen(p.astype(np.float32), 0.5), powered / powered.sum())
    targets = np.array([[[0.7, 0.3]], [[0.2, 0.8]]], np.float32)
    logits = np.array([[[1.0, 0.0]], [[0.0, 2.0]]], np.float32)
    labeled = np.array([1.0, 0.0], np.float32)
    expected = [
        cross_entropy(targets[0, 0], softmax(logits[0, 0])),
        10.0 * float(np.mean((targets[1, 0] - softmax(logits[1, 0])) ** 2)),
    ]
    close(losses.mixmatch_loss(targets, logits, labeled, lambda_u=10.0), expected)


def test_hard_label_multilabel_ignores_uncertain_minus_one_labels():
    # CheXpert U-ignore: -1 labels get weight 0 and the mean runs over the known labels only.
    logits = tf.constant([[0.0, 2.0, -1.0], [1.0, 0.0, 0.0]])
    labels = tf.constant([[1.0, -1.0, 0.0], [-1.0, -1.0, -1.0]])
    got = losses.hard_label_cross_entropy(labels, logits, "multilabel").numpy()
    # row 0: BCE(1, sigmoid(0)) = log 2; BCE(0, sigmoid(-1)) = log(1 + e^-1); the -1 label is left out.
    expected_row0 = (math.log(2.0) + math.log(1.0 + math.exp(-1.0))) / 2.0
    np.testing.assert_allclose(got, [expected_row0, 0.0], rtol=1e-6, atol=1e-7)
    # Without -1 labels nothing changes: the plain mean over all labels.
    full = losses.hard_label_cross_entropy(tf.constant([[1.0, 0.0, 0.0]]), logits[:1], "multilabel").numpy()
    expected_full = (math.log(2.0) + math.log(1.0 + math.exp(2.0)) + math.log(1.0 + math.exp(-1.0))) / 3.0
    np.testing.assert_allclose(full, [expected_full], rtol=1e-6)
