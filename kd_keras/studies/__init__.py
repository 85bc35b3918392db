"""The four studies, each a :class:`~kd_keras.runner.Study` run by ``kd-keras run <name>``.

=============  =========================================================================================
name           study
=============  =========================================================================================
``oct``        002: ResNet50 teacher, lightweight students, pseudo-labels on unlabeled OCT B-scans (main job)
``dr``         000: KD with transfer learning and unlabeled random images (diabetic retinopathy)
``simclr``     003: SimCLR-pretrained teacher, pseudo-labels, distilled student (referable DR)
``attention``  004: attention-transfer teacher-student (chest X-rays, DR)
=============  =========================================================================================

Adding a study: a module with a settings dataclass, its presets and a ``Study`` subclass named ``STUDY``
(see :mod:`kd_keras.runner`), and one line in :data:`STUDIES` and :data:`_MODULES`.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["STUDIES", "get_study"]

STUDIES = {
    "oct": "002 OCT student-teacher with unlabeled B-scans (the main job)",
    "dr": "000 knowledge distillation with unlabeled random images (diabetic retinopathy)",
    "simclr": "003 SimCLR pretraining + knowledge distillation (referable DR)",
    "attention": "004 attention transfer teacher-student",
}
_MODULES = {
    "oct": "kd_keras.studies.oct_student_teacher",
    "dr": "kd_keras.studies.dr_kd_unlabeled",
    "simclr": "kd_keras.studies.simclr_distill",
    "attention": "kd_keras.studies.attention_transfer",
}


def get_study(name: str) -> Any:
    """The :class:`~kd_keras.runner.Study` registered as ``name`` (imported on first use).

    Raises:
        KeyError: an unknown name (the message lists the known ones).
    """
    if name not in _MODULES:
        raise KeyError(f"unknown study {name!r}; studies: {', '.join(STUDIES)}")
    module = importlib.import_module(_MODULES[name])
    if not hasattr(module, "STUDY"):
        raise KeyError(f"study {name!r} is not on the runner yet")
    return module.STUDY
