#!/usr/bin/env python3
"""Writes reference.safetensors with the reference `safetensors` package (0.8.0 used).

Usage: python services/model/safetensors/testdata/make_testdata.py
The values are read back by read.test.ts; keep the two in step.
"""

import os

import numpy as np
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))

tensors = {
    "vision.weight": np.arange(6, dtype=np.float32).reshape(2, 3) / 4,
    "positions": np.array([0, -1, 2**40], dtype=np.int64),
    "mask": np.array([1, 0, 1, 1, 0], dtype=np.uint8),
    "half": np.array([1.0, -2.0, 0.5], dtype=np.float16),
    "ids": np.array([[7, 8], [9, -10]], dtype=np.int32),
    "scalar": np.array(3.5, dtype=np.float32),
    "empty": np.zeros((0, 4), dtype=np.float32),
}
save_file(tensors, os.path.join(HERE, "reference.safetensors"), metadata={"format": "np", "note": "loupe"})
