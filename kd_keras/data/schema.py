"""What one element of a kd-keras training stream holds.

Pipelines yield dicts with these keys (batched along the first axis); the ``Distiller`` reads them. A dict, not a
tuple, so a stream can carry cached teacher outputs or a second augmented view without changing any signature.

- ``IMAGE``: float32 pixels in [0, 255], shape ``(H, W, C)``. Models normalise internally.
- ``LABEL``: int32 class index (multi-class, binary with 2 logits), or float32 multi-hot vector (multi-label)
  or float32 0/1 scalar (binary with 1 logit). For unlabeled examples the value is a placeholder (0).
- ``LABELED``: float32, 1.0 for an expert-labeled example, 0.0 for an unlabeled one. Losses use it as a mask.
- ``TEACHER_LOGITS`` (optional): float32 cached teacher logits for this example (unaugmented view).
- ``TEACHER_TAP_PREFIX + tap`` (optional): a cached teacher feature map of layer ``tap``
  (``"teacher_logits:conv4_block6_out"``), for attention transfer / hints from a cache.
- ``VIEW2`` (optional): a second augmented view of the same image (SimCLR, FixMatch strong view).
- ``INDEX`` (optional): int64 position of the example in its source (for caches and reports).
"""

IMAGE = "image"
LABEL = "label"
LABELED = "labeled"
TEACHER_LOGITS = "teacher_logits"
TEACHER_TAP_PREFIX = TEACHER_LOGITS + ":"
VIEW2 = "view2"
INDEX = "index"
