#!/usr/bin/env python3
"""Generate the bucket benchmark data set into a local directory.

The same seed gives the same bytes. The default set is about 1 GB in 3,300
objects:

- images/: 330 incompressible JPEG-like files of 0.5-4 MiB (random bytes
  between a JFIF header and an end-of-image marker);
- tensors/: 4 files of 64 MiB of random fp16 values drawn from N(0, 0.02),
  like a checkpoint shard (compressible only in the exponent bits);
- annotations/: 2,966 JSON files of 1-8 KiB.

`--mutate N` rewrites N of the existing files (chosen with the seed and
`--mutate-round`) with new content of the same kind and size class, and
prints their relative paths.

Standard library only, so it runs wherever Python 3.9+ does.
"""

import argparse
import json
import os
import random
import struct
import sys

MIB = 1024 * 1024
JFIF_HEADER = bytes.fromhex("ffd8ffe000104a46494600010100000100010000")
JPEG_END = bytes.fromhex("ffd9")


def fp16_high_byte_table(rng: random.Random, sigma: float) -> bytes:
    """Return a 256-byte table mapping a uniform byte to the high byte of an
    fp16 value drawn from N(0, sigma), by quantiles of 65,536 samples."""
    highs = sorted(struct.pack("<e", rng.gauss(0.0, sigma))[1] for _ in range(65536))
    return bytes(highs[(i * len(highs)) // 256 + len(highs) // 512] for i in range(256))


def fp16_tensor(rng: random.Random, size: int, table: bytes) -> bytes:
    """Return `size` bytes of little-endian fp16 values: a random low byte and a
    high byte (sign, exponent, top mantissa bits) with the normal distribution's
    frequencies."""
    count = size // 2
    out = bytearray(size)
    out[0::2] = rng.randbytes(count)
    out[1::2] = rng.randbytes(count).translate(table)
    return bytes(out)


def image(rng: random.Random) -> bytes:
    size = rng.randint(MIB // 2, 4 * MIB)
    body = rng.randbytes(size - len(JFIF_HEADER) - len(JPEG_END))
    return JFIF_HEADER + body + JPEG_END


def annotation(rng: random.Random, index: int) -> bytes:
    boxes = [
        {
            "label": rng.choice(["person", "car", "dog", "cat", "bicycle", "tree", "sign"]),
            "bbox": [round(rng.uniform(0, 1920), 1) for _ in range(4)],
            "score": round(rng.random(), 4),
            "attributes": {"occluded": rng.random() < 0.2, "truncated": rng.random() < 0.1},
        }
        for _ in range(rng.randint(3, 60))
    ]
    doc = {
        "image": f"images/{index % 330:06d}.jpg",
        "id": index,
        "width": 1920,
        "height": 1080,
        "annotator": f"user-{rng.randint(1, 40):02d}",
        "nonce": rng.getrandbits(64),
        "objects": boxes,
    }
    return json.dumps(doc, indent=1).encode()


def layout(args) -> list:
    """Return (relative path, kind, index) for every file of the set."""
    files = [(f"tensors/model-{i:05d}-of-{args.tensors:05d}.fp16", "tensor", i) for i in range(args.tensors)]
    files += [(f"images/{i:06d}.jpg", "image", i) for i in range(args.images)]
    files += [(f"annotations/{i:06d}.json", "json", i) for i in range(args.annotations)]
    return files


def content(kind: str, index: int, rng: random.Random, table: bytes, tensor_size: int) -> bytes:
    if kind == "tensor":
        return fp16_tensor(rng, tensor_size, table)
    if kind == "image":
        return image(rng)
    return annotation(rng, index)


def write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="output directory")
    parser.add_argument("--seed", type=int, default=20260115)
    parser.add_argument("--images", type=int, default=330)
    parser.add_argument("--tensors", type=int, default=4)
    parser.add_argument("--tensor-mib", type=int, default=64)
    parser.add_argument("--annotations", type=int, default=2966)
    parser.add_argument("--mutate", type=int, default=0, metavar="N",
                        help="rewrite N existing files with new content instead of generating the set")
    parser.add_argument("--mutate-round", type=int, default=1, metavar="R",
                        help="rounds with different numbers pick different files and content")
    args = parser.parse_args()

    files = layout(args)
    tensor_size = args.tensor_mib * MIB
    table = fp16_high_byte_table(random.Random(args.seed), 0.02)

    if args.mutate:
        # A stream apart from the generation streams, so new content differs.
        rng = random.Random(f"{args.seed}/mutate/{args.mutate_round}")
        for rel, kind, index in sorted(rng.sample(files, args.mutate)):
            write(os.path.join(args.dir, rel), content(kind, index, rng, table, tensor_size))
            print(rel)
        return 0

    total = 0
    for rel, kind, index in files:
        # One stream per file, so any file can be regenerated on its own.
        rng = random.Random(f"{args.seed}/{rel}")
        data = content(kind, index, rng, table, tensor_size)
        write(os.path.join(args.dir, rel), data)
        total += len(data)
    print(json.dumps({"dir": args.dir, "objects": len(files), "bytes": total}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
