"""docs/predict.md: a quickly trained mobilenet_wd4 (normal vs abnormal, 64x64 grey), a 128-B-scan volume."""
import os
import shutil
import time

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from pathlib import Path

import cv2
import keras
import numpy as np

from kd_keras.data.preprocess import PreprocessConfig, load_image
from kd_keras.engine.training import recalibrate_batch_norm
from kd_keras.export import export_model
from kd_keras.models import build_model

root = Path("../shared/data/kermany-oct-1k")
files = sorted(root.glob("*/*.jpeg"))
patient = lambda f: f.name.split("-")[1]
shape = lambda f: cv2.imread(str(f), cv2.IMREAD_GRAYSCALE).shape
rng = np.random.default_rng(0)
patients = sorted({patient(f) for f in files})
held = set(rng.choice(patients, size=len(patients) // 4, replace=False))
train = [f for f in files if patient(f) not in held]
vol_pool = [f for f in files if patient(f) in held and shape(f) == (496, 512)]
normal = [f for f in vol_pool if f.parent.name == "NORMAL"]
abnormal = [f for f in vol_pool if f.parent.name != "NORMAL"]
print(len(train), len(normal), len(abnormal))
chosen = list(rng.choice(normal, 56, replace=False)) + list(rng.choice(abnormal, 72, replace=False))
order = rng.permutation(len(chosen))
volume = Path("docs_predict_demo/volume_128")
shutil.rmtree(volume, ignore_errors=True)
volume.mkdir(parents=True)
truth = []
for i, j in enumerate(order):
    shutil.copyfile(chosen[j], volume / f"bscan_{i:03d}.jpeg")
    truth.append(chosen[j].parent.name)
(Path("docs_predict_demo/truth.txt")).write_text("\n".join(f"{i} {t}" for i, t in enumerate(truth)))
cfg = PreprocessConfig((64, 64), channels=1)
x = np.stack([load_image(f, cfg) for f in train])
y = np.array([f.parent.name != "NORMAL" for f in train], int)
t = time.time()
keras.utils.set_random_seed(0)
m = build_model("mobilenet_wd4", (64, 64, 1), 2)
m.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
          metrics=["accuracy"])
h = m.fit(x, y, epochs=8, batch_size=32, verbose=0, class_weight={0: 1.0, 1: float((y == 0).sum() / (y == 1).sum())})
recalibrate_batch_norm(m, x[rng.permutation(len(x))[:256]])
print("train s", time.time() - t, "train acc", h.history["accuracy"][-1])
xv = np.stack([load_image(f, cfg) for f in sorted(volume.iterdir())])
yv = np.array([t != "NORMAL" for t in truth])
pred = np.asarray(m(xv, training=False)).argmax(1)
print("volume acc", (pred == yv).mean(), "sens", pred[yv].mean(), "spec", 1 - pred[~yv].mean())
m.save("docs_predict_demo/student.keras")
files = export_model(m, "docs_predict_demo/export", variants=("tflite_fp32", "tflite_int8"), parity_images=xv,
                     representative_images=x[:200], class_names=["NORMAL", "ABNORMAL"], preprocess=cfg,
                     stem="mobilenet_wd4_oct", min_agreement=0.9)
for f in files:
    print(f.path.name, f.parity.decision_agreement, f.parity.max_relative_diff)
