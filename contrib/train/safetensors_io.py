"""Minimal safetensors writer/reader (no dependency on the safetensors package).

Layout: 8-byte little-endian header length N, N bytes of JSON (padded with
spaces so that 8 + N is a multiple of 8), then the data buffer where the
tensors tile contiguously in the order they were given.
"""
import json
import struct

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64,
           "I32": np.int32, "I64": np.int64}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def save_file(tensors, path, metadata=None):
    """tensors: dict name -> numpy array or torch tensor (written in dict order)."""
    header = {}
    blobs = []
    off = 0
    for name, t in tensors.items():
        if hasattr(t, "detach"):
            t = t.detach().cpu().numpy()
        a = np.ascontiguousarray(t)
        if a.dtype not in _NAMES:
            raise ValueError("unsupported dtype %s for %s" % (a.dtype, name))
        b = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        md = {}
        for k, v in metadata.items():
            if not isinstance(v, str):
                raise ValueError("metadata value for %s must be a string" % k)
            md[k] = v
        header = dict([("__metadata__", md)] + list(header.items()))
    js = json.dumps(header, separators=(",", ":")).encode("utf-8")
    js += b" " * ((8 - (8 + len(js)) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(js)))
        f.write(js)
        for b in blobs:
            f.write(b)
    import os
    os.replace(tmp, path)


def load_file(path):
    """Returns (dict name -> numpy array, metadata dict). Validates tiling."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or 8 + n > len(data):
        raise ValueError("%s: bad header length" % path)
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {}) or {}
    buf = data[8 + n:]
    out = {}
    spans = []
    for name, info in header.items():
        dt = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        if e - b != dt.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise ValueError("%s: tensor %s size mismatch" % (path, name))
        spans.append((b, e, name))
        out[name] = np.frombuffer(buf[b:e], dtype=dt).reshape(shape).astype(dt.newbyteorder("="))
    spans.sort()
    pos = 0
    for b, e, name in spans:
        if b != pos:
            raise ValueError("%s: tensor %s does not tile the buffer" % (path, name))
        pos = e
    if pos != len(buf):
        raise ValueError("%s: data buffer size mismatch" % path)
    return out, meta
