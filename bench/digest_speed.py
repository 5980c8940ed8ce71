"""Seconds per GB of the digests a manifest could hold, on this machine, and what checking an 8B checkpoint costs.

Writes a file of random bytes (--gib GiB, in --folder), reads it once to warm the page cache, then reads it
1 MiB at a time: with no digest (the floor), through huatuo_o1.manifests.file_sha256 (what manifests use), and
through hashlib's BLAKE2b and xxhash's XXH3-128 where installed (xxhash comes with `datasets`; not a dependency
of ours). Each is timed --repeats times; the best time counts (the least disturbed by other jobs). Prints seconds
per GB (10^9 bytes) and each digest's time over plain reading's.

Then the projection for an 8B model in bf16 under ZeRO-3: 16 GB of weights plus 3x that (48 GB) of optimizer
state (fp32 master weights and Adam's two moments), 64 GB a checkpoint, verified on 1 process and spread over 8.

Usage:
    python bench/digest_speed.py [--gib 1] [--repeats 3] [--folder /tmp]
"""

import hashlib
import os
import tempfile
import time

from huatuo_o1 import cli
from huatuo_o1.manifests import READ_SIZE, file_sha256

CHECKPOINT_GB = 16 + 3 * 16  # an 8B bf16 model's weights and its optimizer state


def read_with(path, digest_class):
    with open(path, "rb") as f:
        digest = digest_class() if digest_class else None
        while chunk := f.read(READ_SIZE):
            if digest:
                digest.update(chunk)


def best_seconds(work, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main_bench():
    parser = cli.argument_parser(__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", default=None)
    args = parser.parse_args()
    size = int(args.gib * (1 << 30))
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        path = os.path.join(folder, "blob")
        with open(path, "wb") as f:
            for _ in range(size // (64 << 20)):
                f.write(os.urandom(64 << 20))
            f.write(os.urandom(size % (64 << 20)))
        read_with(path, None)
        candidates = {
            "read only": lambda: read_with(path, None),
            "sha256 (manifests.file_sha256)": lambda: file_sha256(path),
            "blake2b": lambda: read_with(path, hashlib.blake2b),
        }
        try:
            import xxhash

            candidates["xxh3_128 (xxhash)"] = lambda: read_with(path, xxhash.xxh3_128)
        except ImportError:
            pass
        seconds = {name: best_seconds(work, args.repeats) for name, work in candidates.items()}
    per_gb = {name: s / (size / 1e9) for name, s in seconds.items()}
    print(f"{size / 1e9:.2f} GB file, best of {args.repeats}, cores: {os.cpu_count()}")
    for name, value in per_gb.items():
        print(f"  {name:32s} {value:6.3f} s/GB   {seconds[name] / seconds['read only']:5.2f}x reading alone")
    sha = per_gb["sha256 (manifests.file_sha256)"]
    print(
        f"8B bf16 checkpoint ({CHECKPOINT_GB} GB: 16 GB weights + 48 GB optimizer state): sha256 "
        f"{sha * CHECKPOINT_GB:.0f} s on 1 process, {sha * CHECKPOINT_GB / 8:.0f} s spread over 8; the weights "
        f"alone (what a loader checks) {sha * 16:.0f} s; sizes only: a stat per file"
    )


if __name__ == "__main__":
    cli.run(main_bench)
