"""Wall time of each `superweights` command that does not scan, as a user starts it.

Each command runs as the installed console script, in a fresh process, against a small SQLite
catalog of sample scans (tests/db_samples.py); the median of `--runs` runs is reported with the
time of `python -c pass` for reference. One JSON file goes to `--results`.

    python benchmarks/cli_startup.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # db_samples

from db.repository import Catalog  # noqa: E402

from db_samples import sample_result, times  # noqa: E402

SUPERWEIGHTS = Path(sys.executable).with_name("superweights")


def commands(url: str, scratch: Path) -> dict[str, list[str]]:
    return {
        "--help": ["--help"],
        "sql": ["sql", "SELECT count(*) FROM models", "--db", url],
        "show": ["show", "tiny-llama", "--db", url],
        "lineage": ["lineage", "org/tiny-llama-chat", "--db", url],
        "export": ["export", "--parquet", str(scratch / "parquet"), "--db", url],
        "export --keep-list": ["export", "--keep-list", "llama.cpp", "tiny-llama", "--db", url],
        "db upgrade": ["db", "upgrade", "--db", url],
        "report": ["report", "--out", str(scratch / "site"), "--db", url],
    }


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        url = f"sqlite:///{scratch / 'catalog.db'}"
        catalog = Catalog(url)
        catalog.save(sample_result("org/tiny-llama"), **times(0))
        catalog.save(sample_result("org/tiny-llama-chat", base_model="org/tiny-llama"), **times(1))
        rows = {"python -c pass": statistics.median(wall([sys.executable, "-c", "pass"]) for _ in range(args.runs))}
        for name, argv in commands(url, scratch).items():
            rows[name] = statistics.median(wall([str(SUPERWEIGHTS), *argv]) for _ in range(args.runs))
    print(f"{'command':<16} median s ({args.runs} runs, load average {os.getloadavg()[0]:.1f})")
    for name, seconds in rows.items():
        print(f"{name:<16} {seconds:6.2f}")
    record = {"machine": platform.node(), "cpus": os.cpu_count(), "load_average": os.getloadavg()[0], "runs": args.runs, "median_s": rows}
    write_results(record, args.results, "cpu-cli-startup")


if __name__ == "__main__":
    main()
