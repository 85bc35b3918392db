"""The ``Distiller``: a Keras model that trains a student from a frozen teacher with any transfer objective.

``fit`` / ``evaluate`` take streams of batch dicts (:mod:`kd_keras.data.schema`): ``image``, ``label``,
``labeled`` (1/0 mask; missing = all labeled), and optionally ``teacher_logits`` (cached teacher outputs: the
teacher is then not run), ``view2`` (a second augmented view) and ``index``.

What is saved. The product is the **student**: ``distiller.save_student("student.keras")`` writes it alone
(no teacher, no projection head or regressor inside). ``distiller.save(...)`` raises on purpose.
``distiller.save_weights(...)`` is for checkpoints (student, objective layers, EMA teacher and optimizer
state; an external teacher is not included, it is rebuilt from its own file); see
:mod:`kd_keras.engine.callbacks`.

Distribution. Create the student, the teacher and the Distiller, and call ``compile``, inside
``strategy.scope()`` (:func:`kd_keras.engine.distribute.get_strategy`). Per-example losses are summed over a
replica and divided by the global batch size (Keras' gradient all-reduce sums replicas), and the reported
``loss`` is the mean over all examples of all replicas. Batch normalisation in the student uses the statistics
of the global batch (Keras' ``synchronized`` batch norm, switched on while the step is traced on several
replicas): the same student whatever the number of replicas, also when each replica holds few images.

Mixed precision. Under a ``mixed_float16`` / ``mixed_bfloat16`` policy (the runner's ``precision`` setting) the
layers compute in 16 bits and keep float32 weights; the student's and teacher's outputs are cast to float32 before
softmax, temperature, KL and every loss (:class:`~kd_keras.engine.step_context.StepContext`), ``call`` returns
float32 logits, and under ``mixed_float16`` Keras' ``compile`` wraps the optimizer in a ``LossScaleOptimizer``
(``train_step`` scales the loss with ``optimizer.scale_loss``; ``apply_gradients`` unscales and skips a step
whose gradients are not finite).

Example:
    >>> with strategy.scope():
    ...     student = build_model("mobilenet_wd4", (64, 64, 1), num_classes=2)
    ...     teacher = keras.models.load_model("teacher.keras")
    ...     distiller = Distiller(student, teacher)
    ...     distiller.compile(keras.optimizers.Adam(1e-3), metrics=["accuracy"],
    ...                       objective=get_objective("hinton", alpha=0.1, temperature=4.0))
    >>> distiller.fit(train_stream, validation_data=val_stream, epochs=10)
    >>> distiller.save_student("student.keras")
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from kd_keras.data import schema
from kd_keras.engine import losses
from kd_keras.engine.distribute import default_jit_compile
from kd_keras.engine.objectives import Objective, ObjectiveOutput, get_objective
from kd_keras.engine.step_context import StepContext, teacher_tap_key
from kd_keras.models.registry import with_taps

__all__ = ["Distiller", "StepContext", "teacher_tap_key"]  # the last two re-exported from step_context


class _Untracked:
    """Holds models Keras must not track (an external teacher, tap views sharing the student's weights), so
    they are neither saved twice nor in the checkpoint."""

    def __init__(self, **items: Any):
        self.__dict__.update(items)


class _Tracker(keras.metrics.Mean):
    """A running mean of per-example values (the Distiller's ``loss`` and objective terms)."""


class Distiller(keras.Model):
    """Trains ``student`` with a transfer objective, from a frozen ``teacher`` (or none).

    ``call`` is the student. ``train_step`` runs the objective on a batch dict and updates the student (and
    the objective's own layers); ``test_step`` reports the student's hard-label cross-entropy (``loss``, over
    the labeled examples) and the compiled metrics on labeled examples. Metrics receive **logits**: use e.g.
    ``keras.metrics.BinaryAccuracy(threshold=0.0)`` for a one-logit head, ``"sparse_categorical_accuracy"``
    for class indices.

    Do not save the Distiller itself: the deliverable is :meth:`save_student` (see the module docstring).

    Args:
        student: the model to train (a functional model for objectives that read taps).
        teacher: a frozen model whose logits (and taps) guide the student; ``None`` for objectives without a
            teacher or when every batch carries ``teacher_logits``.
        ema_decay: instead of ``teacher``, use an exponential moving average of the student as the teacher
            (mean teacher), updated after every step: ``ema = decay * ema + (1 - decay) * student``.
        name: model name.
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: keras.Model | None = None,
        *,
        ema_decay: float | None = None,
        name: str = "distiller",
    ):
        super().__init__(name=name)
        if teacher is not None and ema_decay is not None:
            raise ValueError("Distiller: give either a teacher or ema_decay (an EMA teacher), not both")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"Distiller: ema_decay must be in [0, 1), got {ema_decay}")
        self._student = student
        self.ema_decay = ema_decay
        if ema_decay is not None:
            # Tracked (an attribute), so the EMA weights are checkpointed with the run.
            self.ema_teacher = keras.models.clone_model(student)
            self.ema_teacher.set_weights(student.get_weights())
            self.ema_teacher.trainable = False
            teacher = self.ema_teacher
        elif teacher is not None:
            teacher.trainable = False
        self._models = _Untracked(teacher=teacher, taps={})
        self.objective: Objective | None = None
        self._term_names: tuple[str, ...] = ()
        self.built = True  # student and teacher are built models

    @property
    def student(self) -> keras.Model:
        """The student model (what :meth:`save_student` writes)."""
        return self._student

    @property
    def teacher(self) -> keras.Model | None:
        """The frozen teacher (the EMA copy when ``ema_decay`` is set), or ``None``."""
        return self._models.teacher

    def compile(
        self,
        optimizer: Any = "adam",
        metrics: list | None = None,
        objective: str | dict | Objective = "hard_label",
        jit_compile: bool | str | None = None,
        **kwargs: Any,
    ) -> None:
        """Configure training.

        Args:
            optimizer: a Keras optimizer or its name.
            metrics: metrics of the student's logits against ``label`` on labeled examples.
            objective: an objective name, ``{"name": ..., **config}`` dict or
                :class:`~kd_keras.engine.objectives.Objective` (see :func:`get_objective`).
            jit_compile: XLA compilation of the step; ``None``: the run's ``jit_compile`` setting
                (:func:`~kd_keras.engine.distribute.run_scope`; off by default: collectives on CPU and
                deterministic ops do not combine with XLA, and it made CPU training 7x slower here).
            **kwargs: passed to ``keras.Model.compile`` (no ``loss``: the objective is the loss).
        """
        if "loss" in kwargs:
            raise ValueError(
                "Distiller.compile: pass objective=..., not loss=... (the objective is the loss)"
            )
        objective = get_objective(objective)
        with self.distribute_strategy.scope():
            objective.build(self._student, self.teacher)
            self.objective_layers = list(objective.layers)
            for kind, taps in (("student", objective.student_taps), ("teacher", objective.teacher_taps)):
                if taps:
                    model = self._student if kind == "student" else self.teacher
                    if model is None:
                        continue  # taps then come from the batch (cached teacher outputs)
                    self._models.taps[(kind, tuple(taps))] = with_taps(model, list(taps))
            self.objective = objective
            self._term_names = tuple(objective.terms)
            self.loss_tracker = _Tracker(name="loss")
            self.term_trackers = [_Tracker(name=n) for n in self._term_names]
        # As weighted metrics, so the labeled mask (sample weight) keeps unlabeled examples out of them.
        weighted = [*(metrics or []), *(kwargs.pop("weighted_metrics", None) or [])]
        if jit_compile is None:
            jit_compile = default_jit_compile()
        # Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer (auto_scale_loss); train_step
        # scales the loss with optimizer.scale_loss and apply_gradients unscales and skips non-finite steps.
        super().compile(
            optimizer=optimizer, weighted_metrics=weighted or None, jit_compile=jit_compile, **kwargs
        )

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras (3.15) reads a first distributed batch for the shapes of its symbolic build and reduces it with
        # strategy.reduce("MEAN", ...), which MultiWorkerMirroredStrategy cannot do on a dict batch. Only shapes
        # and dtypes are needed: one replica's element spec gives them without reading (decoding) a batch.
        # Nor is an iterator made: every new iterator of a seeded stream draws the next permutation
        # (shuffle's reshuffle_each_iteration, Dataset.random's rerandomize_each_iteration) and its prefetch
        # advances the augmentation's seed state, so a throw-away iterator here made a run on several replicas
        # train on other batches than the same run on one device.
        dataset = getattr(iterator, "_distributed_dataset", None)  # Keras' TFEpochIterator
        if dataset is not None and self._distribute_strategy is not None:
            data_batch = tf.nest.map_structure(
                lambda s: s._value_specs[0] if hasattr(s, "_value_specs") else s, dataset.element_spec
            )
        elif iterator is not None and self._distribute_strategy is not None:
            for _, _, batches in iterator:
                spec = getattr(batches, "element_spec", None)
                if spec is not None:
                    data_batch = tf.nest.map_structure(
                        lambda s: s._value_specs[0] if hasattr(s, "_value_specs") else s, spec
                    )
                else:  # not a tf.data iterator: one replica's values of the first batch
                    local = self.distribute_strategy.experimental_local_results
                    data_batch = tf.nest.map_structure(
                        lambda v, local=local: local(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v,
                        next(batches),
                    )
                break
        return super()._maybe_symbolic_build(data_batch=data_batch)

    def _tap_model(self, kind: str, taps: tuple[str, ...]) -> keras.Model:
        key = (kind, taps)
        if key not in self._models.taps:
            raise ValueError(
                f"{kind} taps {list(taps)} were not prepared: the objective must list them in {kind}_taps"
            )
        return self._models.taps[key]

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        # Our trackers replace Keras' own loss tracker (which a model compiled without `loss` leaves idle).
        own = [self.loss_tracker, *self.term_trackers] if self.objective is not None else []
        others = [
            m
            for m in super().metrics
            if not isinstance(m, _Tracker) and not (isinstance(m, keras.metrics.Mean) and m.name == "loss")
        ]
        return own + others

    def call(self, inputs: Any, training: bool = False) -> tf.Tensor:
        """The student's logits (``inputs`` is an image tensor or a batch dict)."""
        if isinstance(inputs, dict):
            inputs = inputs[schema.IMAGE]
        return tf.cast(self._student(inputs, training=training), tf.float32)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Keras builds metrics from a symbolic batch with y=None: labels and mask live inside the dict.
        if y is None and isinstance(x, dict) and schema.LABEL in x:
            y, sample_weight = x[schema.LABEL], x.get(schema.LABELED)
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _standardize(self, data: Any) -> dict[str, tf.Tensor]:
        if not isinstance(data, dict) or schema.IMAGE not in data:
            raise ValueError(
                f"Distiller expects batches that are dicts with at least {schema.IMAGE!r} "
                f"(kd_keras.data.schema), got {type(data).__name__}"
                + (f" with keys {sorted(data)}" if isinstance(data, dict) else "")
            )
        batch = dict(data)
        n = tf.shape(batch[schema.IMAGE])[0]
        if schema.LABELED not in batch:
            batch[schema.LABELED] = tf.ones([n], tf.float32)
        batch[schema.LABELED] = tf.reshape(tf.cast(batch[schema.LABELED], tf.float32), [-1])
        if schema.LABEL not in batch:
            batch[schema.LABEL] = tf.zeros([n], tf.int32)
            batch[schema.LABELED] = tf.zeros([n], tf.float32)
        batch[schema.IMAGE] = tf.cast(batch[schema.IMAGE], tf.float32)
        return batch

    def _check_objective(self, batch: dict[str, tf.Tensor]) -> Objective:
        objective = self.objective
        if objective is None:
            raise ValueError("Distiller: call compile(optimizer, metrics, objective=...) before fit")
        missing = [k for k in objective.required_keys if k not in batch]
        if missing:
            raise ValueError(
                f"objective {objective.name!r} needs batch keys {missing}; the batch has {sorted(batch)}"
            )
        if objective.needs_teacher and self.teacher is None and schema.TEACHER_LOGITS not in batch:
            raise ValueError(
                f"objective {objective.name!r} needs a teacher: pass one to Distiller or batches with "
                f"{schema.TEACHER_LOGITS!r}"
            )
        return objective

    def train_step(self, data):
        batch = self._standardize(data)
        objective = self._check_objective(batch)
        with tf.GradientTape() as tape, self._global_batch_norm():
            ctx = StepContext(self, batch, training=True)
            out: ObjectiveOutput = objective.compute(batch, ctx)
            # Keras' convention: replica sum / global batch; the optimizer's all-reduce sums the replicas.
            loss = tf.reduce_sum(out.loss) / ctx.global_batch_size
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))
        if self.ema_decay is not None:
            self._update_ema()
        # Per-example updates: Mean's (total, count) are summed over replicas on read, so the reported value
        # is the mean over the global batch, not the replica loss divided by the number of replicas.
        self.loss_tracker.update_state(out.loss)
        for tracker in self.term_trackers:
            term = out.terms[tracker.name]
            values, weights = term if isinstance(term, tuple) else (term, None)
            tracker.update_state(values, sample_weight=weights)
        return self._step_outputs(
            self.compute_metrics(batch, batch[schema.LABEL], out.student_logits, batch[schema.LABELED])
        )

    @contextlib.contextmanager
    def _global_batch_norm(self) -> Iterator[None]:
        """While the step is traced on several replicas, the student's batch norm layers normalise with the
        global batch's statistics (an all-reduce in the traced graph); the layers' saved config is unchanged."""
        if self.distribute_strategy.num_replicas_in_sync == 1:
            yield
            return
        layers = [layer for layer in self._student._flatten_layers()
                  if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized]
        for layer in layers:
            layer.synchronized = True
        try:
            yield
        finally:
            for layer in layers:
                layer.synchronized = False

    def _step_outputs(self, results: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        strategy = self.distribute_strategy
        multi_worker = (
            isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)()
        )
        if multi_worker:
            # tensorflow/tensorflow#72388: across workers Keras reduces each step output with
            # strategy.reduce("MEAN", value, axis=0), which fails on scalars; rank-1 values reduce to scalars.
            return {k: tf.reshape(v, [1]) for k, v in results.items()}
        return results

    def _update_ema(self) -> None:
        decay = self.ema_decay
        # tf.Variables under the Keras wrappers; integer states (random-seed counters) are not averaged.
        pairs = [
            (e.value, v.value)
            for e, v in zip(self.ema_teacher.weights, self._student.weights, strict=True)
            if "float" in str(e.dtype)
        ]

        def merge_fn(strategy, pairs):
            for ema, var in pairs:
                strategy.extended.update(
                    ema, lambda e, v: e.assign(decay * e + (1.0 - decay) * v), args=(var,), group=False
                )

        # Variables are updated in cross-replica context (as the optimizer does), once per variable.
        tf.__internal__.distribute.interim.maybe_merge_call(merge_fn, self.distribute_strategy, pairs)

    def test_step(self, data):
        batch = self._standardize(data)
        logits = tf.cast(self._student(batch[schema.IMAGE], training=False), tf.float32)
        task = self.objective.task if self.objective is not None else "auto"
        ce = losses.hard_label_cross_entropy(batch[schema.LABEL], logits, task)
        self.loss_tracker.update_state(ce, sample_weight=batch[schema.LABELED])
        results = self.compute_metrics(batch, batch[schema.LABEL], logits, batch[schema.LABELED])
        return self._step_outputs({k: v for k, v in results.items() if k not in self._term_names})

    def predict_step(self, data):
        if isinstance(data, (tuple, list)):
            data = data[0]
        return self.call(data, training=False)

    def save_student(self, path: str | Path) -> Path:
        """Save the student alone as a ``.keras`` file (the teacher and objective layers are not in it)."""
        path = Path(path)
        if path.suffix != ".keras":
            raise ValueError(f"save_student: {path} must end in .keras")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._student.save(path)
        return path

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Refused: the deliverable is the student. Use :meth:`save_student`, or ``save_weights`` for a
        training checkpoint."""
        raise TypeError(
            "Distiller.save: save the student with distiller.save_student('student.keras'); "
            "use save_weights or kd_keras.engine.TrainingCheckpoint for checkpoints"
        )

    def get_config(self) -> dict[str, Any]:
        # NotImplementedError: what Keras tools (e.g. TensorBoard) expect from models without a config.
        raise NotImplementedError("Distiller is not serialisable; save the student with save_student(...)")
