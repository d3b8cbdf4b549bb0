"""Transport benchmark matrix behind docs/benchmarks/transport.md. Prints one JSON object.

    PYTHONPATH=src python scripts/bench_transport.py [--quick] > transport.json

Sections: checksum speed (CRC-32C vs zlib crc32 and adler32 on 1 and 4 MiB frames, 1 and 2
threads), loopback goodput vs
a raw socket loop (connections and frame sizes), TLS cost, `tc tbf`-shaped netns links at 1 and
10 Gbit/s (skipped without root), and receiver RSS during a 1 GiB transfer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import crc32c

from prfaas.bench.transport import BenchSpec, run_bench
from prfaas.testbed.netns import netns_unavailable_reason
from prfaas.types import GIB, MIB


def checksum_speed(fn: Callable[[bytes], int], num_threads: int, frame_bytes: int) -> float:
    """GB/s of `fn` over `frame_bytes` frames (2 GiB per thread), summed over the threads."""
    frame = os.urandom(frame_bytes)
    frames_per_thread = 2 * GIB // frame_bytes

    def work() -> None:
        for _ in range(frames_per_thread):
            fn(frame)

    with ThreadPoolExecutor(num_threads) as pool:
        t0 = time.perf_counter()
        list(pool.map(lambda _: work(), range(num_threads)))
        elapsed_s = time.perf_counter() - t0
    return num_threads * frames_per_thread * frame_bytes / elapsed_s / 1e9


def make_tls_dir() -> str | None:
    if shutil.which("openssl") is None:
        return None
    d = Path(tempfile.mkdtemp(prefix="prfaas-bench-tls-"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*a: str) -> None:
        subprocess.run(["openssl", *a], check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
        "-days", "2", "-subj", "/CN=bench-ca")  # fmt: skip
    run("req", *ec, "-keyout", str(d / "node.key"), "-out", str(d / "node.csr"),
        "-subj", "/CN=bench-node")  # fmt: skip
    ca = ["-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"), "-CAcreateserial"]
    run("x509", "-req", "-in", str(d / "node.csr"), *ca, "-out", str(d / "node.crt"), "-days", "2")
    return str(d)


def _bench(label: str, spec: BenchSpec) -> dict[str, Any]:
    print(f"running {label} ...", file=sys.stderr, flush=True)
    return {"label": label, **run_bench(spec)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller sizes, one round")
    args = p.parse_args()
    rounds = 1 if args.quick else 2
    size = 64 * MIB if args.quick else 256 * MIB
    out: dict[str, Any] = {"machine": "2-core CPU VM, 24 GiB, Python 3.11.7", "runs": []}
    checksums = {"crc32c": crc32c.crc32c, "zlib.crc32": zlib.crc32, "zlib.adler32": zlib.adler32}
    out["checksum_gb_per_s"] = {
        f"{name} {frame_bytes >> 20} MiB {n} thread": checksum_speed(fn, n, frame_bytes)
        for name, fn in checksums.items()
        for frame_bytes in (MIB, 4 * MIB)
        for n in (1, 2)
    }
    runs = out["runs"]
    for conns in (1, 2, 4, 8):
        runs.append(_bench(f"loopback c={conns}", BenchSpec(size, conns, rounds=rounds)))
    for conns in (1, 4):
        spec = BenchSpec(size, conns, rounds=rounds, io_threads=True)
        runs.append(_bench(f"loopback io_threads c={conns}", spec))
    for frame_bytes in (256 * 1024, MIB, 16 * MIB):
        spec = BenchSpec(size, 4, frame_bytes=frame_bytes, rounds=rounds)
        runs.append(_bench(f"loopback c=4 frame={frame_bytes}", spec))
    tls_dir = make_tls_dir()
    if tls_dir is not None:
        tls = (f"{tls_dir}/node.crt", f"{tls_dir}/node.key", f"{tls_dir}/ca.crt")
        for conns in (1, 4):
            spec = BenchSpec(size, conns, rounds=rounds, tls=tls, modes=("kv",))
            runs.append(_bench(f"loopback TLS c={conns}", spec))
            spec = BenchSpec(size, conns, rounds=rounds, tls=tls, modes=("kv",),
                             payload_checksum=False)  # fmt: skip
            runs.append(_bench(f"loopback TLS no payload CRC c={conns}", spec))
    reason = netns_unavailable_reason()
    if reason is None:
        for rate, link_size in ((1.0, 64 * MIB), (1.0, 256 * MIB), (10.0, 256 * MIB)):
            for conns in (1, 4):
                spec = BenchSpec(link_size, conns, rounds=rounds, link_gbps=rate, repeats=2)
                runs.append(
                    _bench(f"netns tbf {rate} Gbit/s {link_size >> 20} MiB c={conns}", spec)
                )
    else:
        out["netns_skipped"] = reason
    mem = BenchSpec(GIB, 4, repeats=1, rounds=1, modes=("kv",))
    runs.append(_bench("memory 1 GiB c=4", mem))
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
