#!/usr/bin/env python3
"""Sets or removes metadata keys of a safetensors file in place, leaving
every tensor's bytes as they are (only the JSON header is rewritten).

    python3 contrib/train/set_metadata.py FILE KEY=VALUE... [-KEY...]

Example (the supported sizes of the bundled model, doc/model-format.md):

    python3 contrib/train/set_metadata.py models/fashion-dit.safetensors dexec.sizes=28x28
"""
import json
import os
import struct
import sys


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    path = argv[1]
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or 8 + n > len(data):
        sys.stderr.write("%s: not a safetensors file (header length %d)\n" % (path, n))
        return 1
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    for arg in argv[2:]:
        if arg.startswith("-"):
            meta.pop(arg[1:], None)
        elif "=" in arg:
            k, v = arg.split("=", 1)
            meta[k] = v
        else:
            sys.stderr.write("%s: expected KEY=VALUE or -KEY\n" % arg)
            return 2
    header = dict([("__metadata__", meta)] + list(header.items())) if meta else header
    js = json.dumps(header, separators=(",", ":")).encode("utf-8")
    js += b" " * ((8 - (8 + len(js)) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(js)))
        f.write(js)
        f.write(data[8 + n:])
    os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
