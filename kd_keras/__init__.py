"""kd-keras: teacher-student knowledge transfer for medical images, with edge export.

Layers of the library (each importable alone, no cycles):

- ``kd_keras.models``: the model zoo (teachers and lightweight students), built by name.
- ``kd_keras.data``: dataset layouts, patient-level splits, preprocessing, tf.data pipelines, synthetic data.
- ``kd_keras.engine``: transfer objectives, the ``Distiller`` and the study recipes.
- ``kd_keras.export``: TFLite / ONNX export with parity checks, and latency benchmarks.
- ``kd_keras.evaluation``: clinical metrics, clustered-bootstrap confidence intervals, reports and plots.
"""

__version__ = "0.1.0"
