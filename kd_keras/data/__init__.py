"""Data layer: dataset layouts, patient identity and splits, preprocessing, augmentation, tf.data pipelines,
synthetic demo data.

- :mod:`~kd_keras.data.sources`: labeled layouts (class folders, CSV manifests, EyePACS, Messidor, CheXpert, .npz)
  and unlabeled pools, resolved to :class:`~kd_keras.data.records.Records`.
- :mod:`~kd_keras.data.patients`, :mod:`~kd_keras.data.splits`: patient identity per layout; patient-level
  train/val/test and k-fold splits.
- :mod:`~kd_keras.data.tasks`: multi-class, normal-vs-abnormal, referable DR, DR grades, multi-label.
- :mod:`~kd_keras.data.preprocess`, :mod:`~kd_keras.data.augment`: OpenCV reading and preprocessing (CLAHE,
  fundus crop), Keras 3 augmentation and SimCLR views.
- :mod:`~kd_keras.data.validate`, :mod:`~kd_keras.data.pipeline`: bad-input screening and reporting; tf.data
  streams of dicts (see :mod:`~kd_keras.data.schema`), including mixed labeled/unlabeled streams.
- :mod:`~kd_keras.data.synthetic_oct`, :mod:`~kd_keras.data.synthetic_fundus`,
  :mod:`~kd_keras.data.natural_images`: embedded demo data generated offline.
"""
