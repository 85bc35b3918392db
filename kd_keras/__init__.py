"""kd-keras: teacher-student knowledge transfer for medical images, with edge export.

Layers of the library (each importable alone, no cycles):

- ``kd_keras.models``: the model zoo (teachers and lightweight students), built by name.
- ``kd_keras.data``: dataset layouts, patient-level splits, preprocessing, tf.data pipelines, synthetic data.
- ``kd_keras.engine``: transfer objectives, the ``Distiller`` and the training stack.
- ``kd_keras.studies``: the recipes of the reproduced studies.
- ``kd_keras.export``: TFLite / ONNX export with parity checks, and latency benchmarks.
- ``kd_keras.evaluation``: clinical metrics, clustered-bootstrap confidence intervals, reports and plots.

The names most programs need are also here, flat (``__all__``). They are imported on first use (PEP 562), so
``import kd_keras`` stays cheap: it does not import TensorFlow, Keras or OpenCV until a name that needs them is
used.

Example:

```python
import kd_keras

records = kd_keras.from_class_folders("chest_xray/train")
student = kd_keras.build_model("mobilenet_wd4", (64, 64, 1), num_classes=2)
objective = kd_keras.get_objective("hinton", alpha=0.1, temperature=4.0)
```
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module it is imported from on first use. Names point at the package that exports them
# (kd_keras.engine, kd_keras.models, ...), not at the module that happens to define them today.
_LAZY_NAMES = {
    "DataError": "kd_keras.data.report",
    "DataReport": "kd_keras.data.report",
    "Distiller": "kd_keras.engine",
    "Objective": "kd_keras.engine",
    "ObjectiveOutput": "kd_keras.engine",
    "PreprocessConfig": "kd_keras.data.preprocess",
    "Records": "kd_keras.data.records",
    "build_model": "kd_keras.models",
    "clustered_bootstrap": "kd_keras.evaluation",
    "evaluate_model": "kd_keras.engine",
    "evaluate_predictions": "kd_keras.evaluation",
    "export_model": "kd_keras.export",
    "from_class_folders": "kd_keras.data.sources",
    "from_csv": "kd_keras.data.sources",
    "from_folder": "kd_keras.data.sources",
    "get_objective": "kd_keras.engine",
    "get_strategy": "kd_keras.engine",
    "list_models": "kd_keras.models",
    "list_objectives": "kd_keras.engine",
    "load_labeled": "kd_keras.data.sources",
    "load_model": "kd_keras.models",
    "make_dataset": "kd_keras.data.pipeline",
    "predict": "kd_keras.engine",
    "predict_volumes": "kd_keras.deploy",
    "register_objective": "kd_keras.engine",
    "seed_everything": "kd_keras.engine",
    "train": "kd_keras.engine",
    "train_lr_grid": "kd_keras.engine",
}

__all__ = [
    "DataError",
    "DataReport",
    "Distiller",
    "Objective",
    "ObjectiveOutput",
    "PreprocessConfig",
    "Records",
    "__version__",
    "build_model",
    "clustered_bootstrap",
    "evaluate_model",
    "evaluate_predictions",
    "export_model",
    "from_class_folders",
    "from_csv",
    "from_folder",
    "get_objective",
    "get_strategy",
    "list_models",
    "list_objectives",
    "load_labeled",
    "load_model",
    "make_dataset",
    "predict",
    "predict_volumes",
    "register_objective",
    "seed_everything",
    "train",
    "train_lr_grid",
]


def __getattr__(name: str) -> Any:
    """Imports a public name's module on first access (PEP 562) and caches the name in this module."""
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'kd_keras' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
