"""Accuracy of MNIST ViT models on the 1,000 test digits in models/mnist_test.npz (no training).

    python models/evaluate.py vit_narrow_init.onnx models/vit_narrow.onnx

Needs only numpy and onnxruntime (frontc's own dependencies).
"""
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

data = np.load(Path(__file__).with_name("mnist_test.npz"))
images = data["images"].astype(np.float32)
images = (images / 255.0 if images.max() > 1.5 else images)[:, None]
for path in sys.argv[1:] or [str(Path(__file__).with_name("vit_source.onnx"))]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: images})[0]
    print(f"{path}: accuracy {np.mean(logits.argmax(1) == data['labels']):.1%} on {len(images)} MNIST test digits")
