"""Data layer: dataset layouts, patient identity and splits, preprocessing, augmentation, tf.data pipelines,
synthetic demo data. See :mod:`kd_keras.data.schema` for what a training batch holds."""
