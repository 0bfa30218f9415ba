"""What naming and fingerprinting a model costs at resolve time, on the SmolLM2 GGUF (`make fixtures`).

Times (median of `--runs`, warm page cache) of `catalog.fingerprint.fingerprint` (sha256 of the
file, one thread per file), `catalog.gguf_meta.read_metadata` (the key-value section only) and,
for reference, `gguf.GGUFReader`, which builds every field and tensor. One JSON file goes to `--results`.

    python benchmarks/identity_bench.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from record import write_results

from catalog import settings
from catalog.fingerprint import fingerprint
from catalog.gguf_meta import read_metadata


def median_seconds(work: Callable[[], object], runs: int) -> float:
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    return round(statistics.median(seconds), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=settings.home() / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    from gguf import GGUFReader

    fingerprint([args.file])  # into the page cache
    figures = {
        "file": args.file.name, "bytes": args.file.stat().st_size, "runs": args.runs,
        "fingerprint_s": median_seconds(lambda: fingerprint([args.file]), args.runs),
        "read_metadata_s": median_seconds(lambda: read_metadata(args.file), args.runs),
        "gguf_reader_s": median_seconds(lambda: GGUFReader(args.file).fields, max(1, args.runs // 2)),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    print(json.dumps(figures, indent=2))
    write_results(figures, args.results, "identity")


if __name__ == "__main__":
    main()
