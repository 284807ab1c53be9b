"""Fashion-MNIST IDX (gzip) reader."""
import gzip
import os

import numpy as np

DATA_DIR = "/usr/share/datasets/fashion-mnist"


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    assert (magic >> 8) == 0x08, "expected unsigned byte IDX"
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split="train", data_dir=DATA_DIR):
    """Returns (images uint8 [N,28,28], labels int64 [N])."""
    pre = "train" if split == "train" else "t10k"
    x = _read_idx(os.path.join(data_dir, pre + "-images-idx3-ubyte.gz"))
    y = _read_idx(os.path.join(data_dir, pre + "-labels-idx1-ubyte.gz")).astype(np.int64)
    return x, y
