"""Transfer objectives as small pure functions of tensors.

Every function returns a **per-example** loss of shape ``(batch,)``. Reduction is the caller's job and follows
Keras: sum over the examples of a replica, divided by the *global* batch size (see
:class:`kd_keras.engine.Distiller`), so gradients are right under ``MirroredStrategy``. Masked-out examples
contribute 0 and still count in the denominator, as a zero Keras ``sample_weight`` does.

Tasks. ``task`` is one of:

- ``"multiclass"``: softmax over ``C`` logits, integer labels (a binary task with 2 logits is this task);
- ``"binary"``: one sigmoid logit, 0/1 float labels;
- ``"multilabel"``: ``L`` independent sigmoid logits, multi-hot float labels; per-label terms are averaged
  over the labels (the Keras ``binary_crossentropy`` convention);
- ``"auto"``: ``"binary"`` when there is one logit, else ``"multiclass"`` (multi-label must be stated).

Binary heads. A sigmoid logit ``z`` is treated as the two logits ``[0, z]``:
``softmax([0, z]) = [1 - s, s]`` with ``s = sigmoid(z)``, and ``softmax([0, z] / T)`` is ``sigmoid(z / T)``.
Every temperature formula therefore works unchanged on a one-logit head: the Hinton KL of a binary head is the
KL between the two Bernoulli distributions ``sigmoid(t / T)`` and ``sigmoid(s / T)``, and a one-logit student
can learn from a two-logit teacher only through the caller converting one to the other (see
:func:`class_logits`).

Internally every task is viewed as ``G`` groups of ``K`` classes, logits of shape ``(batch, G, K)``:
multi-class is one group of ``C`` classes, sigmoid tasks are ``L`` groups of the two classes ``[0, z]``.
"""

from __future__ import annotations

import tensorflow as tf

TASKS = ("auto", "multiclass", "binary", "multilabel")
SOFT_TARGET_FORMS = ("convex", "hard_plus_alpha_soft")


def resolve_task(task: str, logits: tf.Tensor) -> str:
    """The concrete task of ``logits`` (resolves ``"auto"``).

    Example:
        >>> resolve_task("auto", tf.zeros((4, 1)))
        'binary'
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    num_logits = logits.shape[-1]
    if task == "auto":
        return "binary" if num_logits == 1 else "multiclass"
    if task == "binary" and num_logits != 1:
        raise ValueError(f"task 'binary' needs one logit, got {num_logits}; use 'multiclass' for 2 logits")
    return task


def class_logits(logits: tf.Tensor, task: str = "auto") -> tf.Tensor:
    """Logits viewed as ``(batch, groups, classes)``; a sigmoid logit ``z`` becomes the pair ``[0, z]``.

    Example:
        >>> class_logits(tf.constant([[2.0]])).numpy().tolist()
        [[[0.0, 2.0]]]
    """
    task = resolve_task(task, logits)
    logits = tf.cast(logits, tf.float32)
    if task == "multiclass":
        return logits[:, None, :]
    return tf.stack([tf.zeros_like(logits), logits], axis=-1)


def hard_targets(labels: tf.Tensor, task: str, num_logits: int) -> tf.Tensor:
    """Labels as probability targets of shape ``(batch, groups, classes)`` (see :func:`class_logits`).

    Args:
        labels: class indices ``(batch,)``/``(batch, 1)`` for multi-class; 0/1 floats ``(batch,)``/
            ``(batch, L)`` for sigmoid tasks (values in between are kept as soft targets).
        task: a concrete task (not ``"auto"``).
        num_logits: the number of logits of the head.
    """
    if task == "multiclass":
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        return tf.one_hot(labels, num_logits, dtype=tf.float32)[:, None, :]
    labels = tf.reshape(tf.cast(labels, tf.float32), [-1, num_logits])
    return tf.stack([1.0 - labels, labels], axis=-1)


def soft_cross_entropy(targets: tf.Tensor, grouped_logits: tf.Tensor) -> tf.Tensor:
    """``-sum_k targets * log_softmax(logits)``, averaged over groups: ``(batch, G, K) -> (batch,)``."""
    log_probs = tf.nn.log_softmax(grouped_logits, axis=-1)
    return tf.reduce_mean(-tf.reduce_sum(targets * log_probs, axis=-1), axis=-1)


def hard_label_cross_entropy(labels: tf.Tensor, logits: tf.Tensor, task: str = "auto") -> tf.Tensor:
    """Cross-entropy with the labels: softmax CE (multi-class), sigmoid BCE (binary, multi-label).

    Args:
        labels: see :func:`hard_targets`.
        logits: ``(batch, num_logits)``.
        task: see the module docstring.

    Returns:
        ``(batch,)``; multi-label averages the per-label BCE over the **known** labels: a label equal to -1
        (CheXpert's uncertain label under the U-ignore policy, :func:`kd_keras.data.sources.chexpert` with
        ``uncertain="ignore"``) gets weight 0 and is left out of the average; an example with no known label
        gets 0.

    Example:
        >>> hard_label_cross_entropy(tf.constant([1]), tf.constant([[0.0, 0.0]])).numpy()  # log 2
        array([0.6931472], dtype=float32)
    """
    task = resolve_task(task, logits)
    if task != "multilabel":
        return soft_cross_entropy(hard_targets(labels, task, logits.shape[-1]), class_logits(logits, task))
    labels = tf.reshape(tf.cast(labels, tf.float32), [-1, logits.shape[-1]])
    known = tf.cast(labels >= 0.0, tf.float32)  # (batch, L); -1 = uncertain, ignored
    grouped = class_logits(logits, task)
    targets = hard_targets(labels * known, task, logits.shape[-1])
    per_label = -tf.reduce_sum(targets * tf.nn.log_softmax(grouped, axis=-1), axis=-1)  # (batch, L)
    return tf.math.divide_no_nan(tf.reduce_sum(per_label * known, -1), tf.reduce_sum(known, -1))


def temperature_probabilities(logits: tf.Tensor, temperature: float = 1.0, task: str = "auto") -> tf.Tensor:
    """``softmax(logits / T)`` per group, ``(batch, G, K)``; the soft targets of Hinton et al. (2015)."""
    return tf.nn.softmax(class_logits(logits, task) / temperature, axis=-1)


def soft_target_kl(
    teacher_logits: tf.Tensor, student_logits: tf.Tensor, temperature: float = 1.0, task: str = "auto"
) -> tf.Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))`` per example (averaged over groups).

    The ``T^2`` factor keeps the gradient scale of the soft term independent of ``T`` (Hinton et al., 2015);
    ``keras.distillation.LogitsDistillation(loss="kl_divergence")`` leaves it out.

    Example:
        >>> soft_target_kl(tf.constant([[1.0, 0.0]]), tf.constant([[1.0, 0.0]]), 4.0).numpy()
        array([0.], dtype=float32)
    """
    task = resolve_task(task, student_logits)
    t = class_logits(teacher_logits, task) / temperature
    s = class_logits(student_logits, task) / temperature
    p_t = tf.nn.softmax(t, axis=-1)
    kl = tf.reduce_sum(p_t * (tf.nn.log_softmax(t, axis=-1) - tf.nn.log_softmax(s, axis=-1)), axis=-1)
    return temperature**2 * tf.reduce_mean(kl, axis=-1)


def _mask(labeled: tf.Tensor | None, like: tf.Tensor) -> tf.Tensor:
    if labeled is None:
        return tf.ones_like(like)
    return tf.reshape(tf.cast(labeled, tf.float32), [-1])


def soft_target_loss(
    labels: tf.Tensor,
    labeled: tf.Tensor | None,
    teacher_logits: tf.Tensor,
    student_logits: tf.Tensor,
    alpha: float,
    temperature: float,
    task: str = "auto",
    form: str = "convex",
) -> tf.Tensor:
    """Hard-label CE on labeled examples combined with the soft-target term on every example.

    Args:
        labels, labeled: labels and the 1/0 labeled mask (``None`` = all labeled).
        teacher_logits, student_logits: ``(batch, num_logits)``.
        alpha: the weight; its meaning depends on ``form``.
        temperature: ``T``.
        task: see the module docstring.
        form: ``"convex"`` (Hinton et al.): ``alpha * CE + (1 - alpha) * T^2 * KL``;
            ``"hard_plus_alpha_soft"``: ``CE + alpha * T^2 * KL``. Study 002 (section 2.5) reports its best
            setting as ``T=3, alpha=1.5``; an alpha above 1 would give the soft term a negative weight under
            the convex form, so the 002 objective uses ``"hard_plus_alpha_soft"``.

    Returns:
        ``(batch,)``. Unlabeled examples (mask 0) get only the soft term.
    """
    if form not in SOFT_TARGET_FORMS:
        raise ValueError(f"form must be one of {SOFT_TARGET_FORMS}, got {form!r}")
    ce = hard_label_cross_entropy(labels, student_logits, task) * _mask(labeled, student_logits[:, 0])
    kd = soft_target_kl(teacher_logits, student_logits, temperature, task)
    if form == "convex":
        return alpha * ce + (1.0 - alpha) * kd
    return ce + alpha * kd


def hinton_loss(
    labels: tf.Tensor,
    teacher_logits: tf.Tensor,
    student_logits: tf.Tensor,
    alpha: float = 0.1,
    temperature: float = 4.0,
    task: str = "auto",
    labeled: tf.Tensor | None = None,
) -> tf.Tensor:
    """Hinton et al. (2015): ``alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``.

    Example:
        >>> y, t, s = tf.constant([0]), tf.constant([[2.0, 0.0]]), tf.constant([[0.0, 0.0]])
        >>> float(hinton_loss(y, t, s, alpha=1.0)[0])  # alpha=1 is plain CE: log 2
        0.6931...
    """
    return soft_target_loss(
        labels, labeled, teacher_logits, student_logits, alpha, temperature, task, "convex"
    )


def teacher_is_correct(labels: tf.Tensor, teacher_logits: tf.Tensor, task: str = "auto") -> tf.Tensor:
    """1.0 where the teacher predicts the label, per group ``(batch, G)``: argmax for multi-class, ``z > 0``
    (sigmoid > 0.5) against ``label > 0.5`` per label for sigmoid tasks."""
    task = resolve_task(task, teacher_logits)
    if task == "multiclass":
        predicted = tf.argmax(teacher_logits, axis=-1, output_type=tf.int32)
        truth = tf.reshape(tf.cast(labels, tf.int32), [-1])
        return tf.cast(tf.equal(predicted, truth), tf.float32)[:, None]
    truth = tf.reshape(tf.cast(labels, tf.float32), [-1, teacher_logits.shape[-1]]) > 0.5
    return tf.cast(tf.equal(teacher_logits > 0.0, truth), tf.float32)


def conditional_distillation_loss(
    labels: tf.Tensor,
    labeled: tf.Tensor | None,
    teacher_logits: tf.Tensor,
    student_logits: tf.Tensor,
    temperature: float = 1.0,
    task: str = "auto",
) -> tf.Tensor:
    """Conditional distillation (study 000, eqs. 1-2).

    For a labeled example the student learns the teacher's soft targets where the teacher predicts the label
    correctly and the hard label where it does not (eq. 2); an unlabeled example (a random image, eq. 1)
    always gets the teacher's soft targets. Soft terms are the cross-entropy ``-sum_j p_T(j) log p_S(j)`` of
    the paper (the KL plus the teacher's entropy: same gradient), at temperature ``T`` and scaled by ``T^2``
    (``T = 1`` is the paper's formula). For sigmoid tasks the condition is checked per label.

    Returns:
        ``(batch,)``.
    """
    task = resolve_task(task, student_logits)
    s = class_logits(student_logits, task)
    soft = temperature_probabilities(teacher_logits, temperature, task)
    hard = hard_targets(labels, task, student_logits.shape[-1])
    use_soft = teacher_is_correct(labels, teacher_logits, task)  # (batch, G)
    use_soft = 1.0 - (1.0 - use_soft) * _mask(labeled, student_logits[:, 0])[:, None]
    log_s_t = tf.nn.log_softmax(s / temperature, axis=-1)
    soft_term = temperature**2 * -tf.reduce_sum(soft * log_s_t, axis=-1)
    hard_term = -tf.reduce_sum(hard * tf.nn.log_softmax(s, axis=-1), axis=-1)
    return tf.reduce_mean(use_soft * soft_term + (1.0 - use_soft) * hard_term, axis=-1)


def pseudo_label_targets(
    teacher_logits: tf.Tensor, task: str = "auto", soft: bool = False, temperature: float = 1.0
) -> tf.Tensor:
    """The teacher's labels as targets ``(batch, G, K)``.

    Hard (default): the argmax class (study 002) or, for sigmoid tasks, ``sigmoid(z) > 0.5`` i.e. ``z > 0``
    (study 003). Soft: ``softmax(t / T)`` (noisy student's soft pseudo-labels).
    """
    probs = temperature_probabilities(teacher_logits, temperature, task)
    if soft:
        return probs
    return tf.one_hot(tf.argmax(probs, axis=-1), probs.shape[-1], dtype=tf.float32)


def pseudo_label_loss(
    labels: tf.Tensor,
    labeled: tf.Tensor | None,
    teacher_logits: tf.Tensor,
    student_logits: tf.Tensor,
    task: str = "auto",
    soft: bool = False,
    temperature: float = 1.0,
    min_confidence: float = 0.0,
) -> tf.Tensor:
    """Expert labels and teacher pseudo-labels pooled under one cross-entropy (studies 002, 003).

    Args:
        labels, labeled: expert labels and the labeled mask; labeled examples use their label.
        teacher_logits, student_logits: ``(batch, num_logits)``.
        task: see the module docstring.
        soft: pseudo-labels as ``softmax(t / T)`` instead of the hard argmax / 0.5 threshold.
        temperature: ``T`` of the soft pseudo-labels (1 = plain probabilities).
        min_confidence: unlabeled groups whose top teacher probability is below this get weight 0.

    Returns:
        ``(batch,)``.
    """
    task = resolve_task(task, student_logits)
    mask = _mask(labeled, student_logits[:, 0])[:, None, None]
    pseudo = pseudo_label_targets(teacher_logits, task, soft, temperature)
    targets = mask * hard_targets(labels, task, student_logits.shape[-1]) + (1.0 - mask) * pseudo
    per_group = -tf.reduce_sum(targets * tf.nn.log_softmax(class_logits(student_logits, task), axis=-1), -1)
    if min_confidence > 0.0:
        confident = tf.cast(
            tf.reduce_max(temperature_probabilities(teacher_logits, 1.0, task), -1) >= min_confidence,
            tf.float32,
        )
        per_group = per_group * (mask[..., 0] + (1.0 - mask[..., 0]) * confident)
    return tf.reduce_mean(per_group, axis=-1)


def match_spatial_size(a: tf.Tensor, b: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Average-pool the larger of two ``(batch, H, W, C)`` maps to the other's size (integer factors only)."""
    (ha, wa), (hb, wb) = a.shape[1:3], b.shape[1:3]
    if (ha, wa) == (hb, wb):
        return a, b

    def pool(x, big, small):
        if big[0] % small[0] or big[1] % small[1]:
            raise ValueError(
                f"feature maps of {big[0]}x{big[1]} and {small[0]}x{small[1]} cannot be matched by pooling "
                "(sizes must divide); pick taps whose sizes divide"
            )
        factor = (big[0] // small[0], big[1] // small[1])
        return tf.nn.avg_pool2d(x, factor, factor, "VALID")

    if ha >= hb and wa >= wb:
        return pool(a, (ha, wa), (hb, wb)), b
    if hb >= ha and wb >= wa:
        return a, pool(b, (hb, wb), (ha, wa))
    raise ValueError(f"feature maps of {ha}x{wa} and {hb}x{wb} cannot be matched by pooling")


AT_VARIANTS = ("paper", "zagoruyko")


def attention_transfer_loss(
    student_features: tf.Tensor, teacher_features: tf.Tensor, variant: str = "paper"
) -> tf.Tensor:
    """Attention-transfer distance between a student and a teacher activation map, per example.

    Args:
        student_features, teacher_features: ``(batch, H, W, C)`` activations; spatial sizes are matched by
            average pooling the larger map (:func:`match_spatial_size`) before anything else.
        variant:
            - ``"paper"`` (study 004, eq. 1): each of the ``C`` feature planes is vectorised and
              L2-normalised, and ``L_AT = 1/C * sum_j || Q_S^j/||Q_S^j|| - Q_T^j/||Q_T^j|| ||_2`` (a norm, not
              squared). Needs the same number of channels in both maps. An all-zero plane (a dead ReLU
              channel) normalises to zeros, as PyTorch's ``F.normalize`` does.
            - ``"zagoruyko"``: the original authors' public code, ``at(x) = normalize(x.pow(2).mean(1))`` and
              ``(at(s) - at(t)).pow(2).mean()``: one spatial map per example (channel mean of squared
              activations), L2-normalised over positions, mean squared difference over positions. Channel
              counts may differ. Their code weights the sum over layer pairs by ``beta / 2`` with
              ``beta = 1000``; here the weight is the caller's (``1 / beta`` in study 004's eq. 2).

    Returns:
        ``(batch,)``.
    """
    if variant not in AT_VARIANTS:
        raise ValueError(f"variant must be one of {AT_VARIANTS}, got {variant!r}")
    s, t = match_spatial_size(tf.cast(student_features, tf.float32), tf.cast(teacher_features, tf.float32))
    batch = tf.shape(s)[0]
    if variant == "zagoruyko":
        a_s = tf.math.l2_normalize(tf.reshape(tf.reduce_mean(s**2, -1), [batch, -1]), axis=1, epsilon=1e-24)
        a_t = tf.math.l2_normalize(tf.reshape(tf.reduce_mean(t**2, -1), [batch, -1]), axis=1, epsilon=1e-24)
        return tf.reduce_mean((a_s - a_t) ** 2, axis=1)
    if s.shape[-1] != t.shape[-1]:
        raise ValueError(
            f"the 'paper' attention transfer compares feature planes one to one: student has {s.shape[-1]} "
            f"channels, teacher {t.shape[-1]}; use variant='zagoruyko' or FitNets hints"
        )
    q_s = tf.math.l2_normalize(tf.reshape(s, [batch, -1, s.shape[-1]]), axis=1, epsilon=1e-24)
    q_t = tf.math.l2_normalize(tf.reshape(t, [batch, -1, t.shape[-1]]), axis=1, epsilon=1e-24)
    # sqrt(x + eps): the norm's gradient is finite where the maps coincide.
    distance = tf.sqrt(tf.reduce_sum((q_s - q_t) ** 2, axis=1) + 1e-12)
    return tf.reduce_mean(distance, axis=1)


def hint_loss(regressed_student: tf.Tensor, teacher_features: tf.Tensor) -> tf.Tensor:
    """FitNets hint (Romero et al., 2015): mean squared error between the regressed student features and the
    teacher's features, per example (FitNets writes ``1/2 ||u - r(v)||^2`` summed; the mean differs by a
    constant factor absorbed by the hint weight). Spatial sizes are matched by pooling."""
    r, t = match_spatial_size(tf.cast(regressed_student, tf.float32), tf.cast(teacher_features, tf.float32))
    if r.shape[-1] != t.shape[-1]:
        raise ValueError(f"hint regressor gives {r.shape[-1]} channels, teacher has {t.shape[-1]}")
    return tf.reduce_mean(tf.reshape((r - t) ** 2, [tf.shape(r)[0], -1]), axis=1)


def nt_xent_loss(
    z1: tf.Tensor,
    z2: tf.Tensor,
    temperature: float = 0.1,
    all_z1: tf.Tensor | None = None,
    all_z2: tf.Tensor | None = None,
    offset: tf.Tensor | int = 0,
) -> tf.Tensor:
    """SimCLR's NT-Xent (Chen et al., 2020; study 003 eq. 1), per image of the local batch.

    For anchor ``i`` (either view),
    ``l(i, j) = -log exp(sim(z_i, z_j)/tau) / sum_{k != i} exp(sim(z_i, z_k)/tau)`` over the ``2N``
    projections of the *global* batch, ``sim`` the cosine similarity. The per-image loss is
    ``(l(view1, view2) + l(view2, view1)) / 2``, so the mean over the ``N`` images is SimCLR's ``L``.

    Args:
        z1, z2: projections of the two views of the local images, ``(b, d)``.
        temperature: ``tau``.
        all_z1, all_z2: the projections of every replica's images, ``(N, d)`` (all-gathered, local ones at
            rows ``offset .. offset + b``); ``None`` = the local batch is the whole batch.
        offset: index of the first local image in the global batch.

    Returns:
        ``(b,)``.
    """
    z1 = tf.math.l2_normalize(tf.cast(z1, tf.float32), axis=1)
    z2 = tf.math.l2_normalize(tf.cast(z2, tf.float32), axis=1)
    all_z1 = z1 if all_z1 is None else tf.math.l2_normalize(tf.cast(all_z1, tf.float32), axis=1)
    all_z2 = z2 if all_z2 is None else tf.math.l2_normalize(tf.cast(all_z2, tf.float32), axis=1)
    n = tf.shape(all_z1)[0]
    candidates = tf.concat([all_z1, all_z2], axis=0)  # (2N, d)
    rows = tf.cast(offset, tf.int32) + tf.range(tf.shape(z1)[0])
    large_negative = tf.constant(1e9, tf.float32)

    def anchor_loss(anchors, self_index, positive_index):
        logits = tf.matmul(anchors, candidates, transpose_b=True) / temperature  # (b, 2N)
        logits -= large_negative * tf.one_hot(self_index, 2 * n)
        return -tf.reduce_sum(tf.one_hot(positive_index, 2 * n) * tf.nn.log_softmax(logits, axis=1), axis=1)

    return 0.5 * (anchor_loss(z1, rows, rows + n) + anchor_loss(z2, rows + n, rows))


def sharpen(probabilities: tf.Tensor, temperature: float) -> tf.Tensor:
    """MixMatch's sharpening ``p^(1/T) / sum(p^(1/T))`` over the last axis."""
    powered = tf.pow(probabilities, 1.0 / temperature)
    return powered / tf.reduce_sum(powered, axis=-1, keepdims=True)


def fixmatch_loss(
    labels: tf.Tensor,
    labeled: tf.Tensor,
    weak_logits: tf.Tensor,
    strong_logits: tf.Tensor,
    threshold: float = 0.95,
    lambda_u: float = 1.0,
    task: str = "auto",
    guess_logits: tf.Tensor | None = None,
) -> tf.Tensor:
    """FixMatch (Sohn et al., 2020), per example.

    A labeled example: CE of its label against the weak-view logits. An unlabeled example: the pseudo-label is
    the argmax of the guess (the model's own weak-view prediction, or ``guess_logits`` from a teacher/EMA);
    where its top probability reaches ``threshold``, ``lambda_u`` times the CE of the pseudo-label against the
    strong-view logits. Labeled and unlabeled terms share the global batch as denominator (FixMatch divides
    each by its own count: with a fixed labeled fraction per batch the difference is a constant rescaling of
    ``lambda_u``).

    Returns:
        ``(batch,)``.
    """
    task = resolve_task(task, weak_logits)
    guess = tf.stop_gradient(weak_logits if guess_logits is None else guess_logits)
    probs = temperature_probabilities(guess, 1.0, task)
    pseudo = tf.one_hot(tf.argmax(probs, -1), probs.shape[-1], dtype=tf.float32)
    confident = tf.cast(tf.reduce_max(probs, -1) >= threshold, tf.float32)  # (batch, G)
    unsup = tf.reduce_mean(
        confident * -tf.reduce_sum(pseudo * tf.nn.log_softmax(class_logits(strong_logits, task), -1), -1), -1
    )
    mask = _mask(labeled, weak_logits[:, 0])
    sup = hard_label_cross_entropy(labels, weak_logits, task)
    return mask * sup + (1.0 - mask) * lambda_u * unsup


def mixmatch_loss(
    mixed_targets: tf.Tensor, mixed_logits: tf.Tensor, labeled: tf.Tensor, lambda_u: float
) -> tf.Tensor:
    """MixMatch's loss on mixed examples (Berthelot et al., 2019), per mixed example.

    Labeled entries: cross-entropy of the mixed targets against the logits. Unlabeled entries: ``lambda_u``
    times the squared L2 distance between mixed targets and predicted probabilities divided by the number of
    classes (the paper's ``1 / (L |U'|) sum ||q - p||^2``), averaged over groups.

    Args:
        mixed_targets: ``(batch, G, K)`` mixed probability targets.
        mixed_logits: ``(batch, G, K)`` student logits on the mixed inputs.
        labeled: ``(batch,)`` 1/0, whether the entry's *own* (not its partner's) example is labeled.
        lambda_u: the unlabeled weight.
    """
    ce = soft_cross_entropy(mixed_targets, mixed_logits)
    squared = tf.reduce_mean(
        tf.reduce_mean((mixed_targets - tf.nn.softmax(mixed_logits, -1)) ** 2, axis=-1), axis=-1
    )
    mask = tf.reshape(tf.cast(labeled, tf.float32), [-1])
    return mask * ce + (1.0 - mask) * lambda_u * squared
