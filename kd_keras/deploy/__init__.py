"""Deployment: exported students on OCT volumes with the edge runtime alone (NumPy, OpenCV, LiteRT / ONNX Runtime).

Nothing in this package imports TensorFlow or Keras, so it runs where only ``pip install "kd-keras[runtime]"``'s
packages are installed (beside the instrument, on a laptop, the reference for a mobile app).

- :func:`predict_volumes`: several volumes in, per-B-scan probabilities and flags, per-volume decisions, CSV /
  JSON / summary / pictures out (the ``kd-keras predict`` command).
- :class:`Predictor`: one exported file and its sidecar, the training preprocessing rebuilt from the sidecar.
- :func:`read_volume`: a folder of B-scans, a multi-page TIFF, ``.npy``/``.npz``, DICOM (pydicom optional).

Example:

```python
from kd_keras.deploy import predict_volumes

results = predict_volumes("export/mobilenet_wd4_int8.tflite", ["eye1.tiff", "eye2/"], out_dir="predictions")
```
"""

from kd_keras.deploy.predict import predict_volumes
from kd_keras.deploy.predictor import ModelError, Predictor, VolumeResult, preprocess_config_from_sidecar
from kd_keras.deploy.volumes import Volume, VolumeError, natural_key, read_volume

__all__ = [
    "ModelError", "Predictor", "Volume", "VolumeError", "VolumeResult", "natural_key", "predict_volumes",
    "preprocess_config_from_sidecar", "read_volume",
]
