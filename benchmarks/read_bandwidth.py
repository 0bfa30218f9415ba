"""Where the parallel read's time goes on a GPU, and which way of reading is fastest (issue 16, item 1).

For each synthetic checkpoint (`synth.py`), page cache warm, in one process: the pinned
host-to-device bandwidth as `bench.py` measures it (one 1 GiB pinned buffer, best of 5) and, for
each way of reading every tensor onto the GPU, the first and the best of `--repeats` wall times
(tensors allocated inside the time, the CUDA allocator emptied before each), GB/s of the best and
its fraction of the copy bandwidth. Every way's tensors (first run) are compared bit for bit with
`safetensors.torch.load_file`'s on the GPU.

Ways:
- `reader`: `catalog.reader.ShardReader` as it is (threads and chunk its defaults);
- `stage T/C/B`: T threads `pread` C-MiB chunks into B pinned buffers each and copy them on their own
  stream (the staging path with its knobs);
- `register T/P`: the shards mmapped, T threads register P-MiB page-aligned pieces of the mapped page
  cache with CUDA (`cuMemHostRegister`, read-only) and copy the tensors straight from there,
  unregistering a piece once its copies are done (`+populate`: `MADV_POPULATE_READ` first;
  `whole`: one piece per shard, a thread per shard; `phases`: all registered, then all copied,
  then all unregistered, each timed);
- parts: allocation alone, `pread` alone (no copy), copy alone from pinned buffers (no read);
- `memcpy`: as `pread` alone and as `stage`, the bytes taken from a 4 GiB host buffer (beyond the L3
  cache) by `memmove` instead of from the page cache by `pread`: what the host's memory gives
  with no kernel in the way (the tensors are not the checkpoint's, so not compared).

    python benchmarks/read_bandwidth.py --sizes 7b 8b --grid 7b --work /tmp/swr --results $OUT
    python benchmarks/read_bandwidth.py --sizes small --device cpu     # the code paths, on the CPU
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import mmap
import os
import resource
import sys
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Empty, SimpleQueue

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # synth, run as a script

import bench  # noqa: E402
from bench import warm_page_cache  # noqa: E402
from record import write_results  # noqa: E402

from catalog.reader import ShardReader, Span, index_shards  # noqa: E402
from catalog.reader import _pread as pread  # noqa: E402
from catalog.sources import checkpoint_shards  # noqa: E402

import synth  # noqa: E402

MiB = 1 << 20
PAGE = mmap.PAGESIZE
READ_ONLY = 0x08  # CU_MEMHOSTREGISTER_READ_ONLY
MADV_POPULATE_READ = 22
Tensors = dict[str, torch.Tensor]


def sync(device: torch.device) -> None:
    bench.sync(str(device))


def release(device: torch.device) -> None:
    bench.release()


def pinned_bandwidth(device: torch.device) -> float | None:
    return bench.pinned_bandwidth(str(device))


# ---------------------------------------------------------------------------------------------- helpers


def allocate(spans: dict[str, Span], device: torch.device) -> Tensors:
    return {name: torch.empty(s.shape, dtype=s.dtype, device=device) for name, s in spans.items()}


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(-1).view(torch.uint8)


def drain(queue: SimpleQueue) -> Iterator:
    while True:
        try:
            yield queue.get_nowait()
        except Empty:
            return


def queued(items: list) -> SimpleQueue:
    queue: SimpleQueue = SimpleQueue()
    for item in items:
        queue.put(item)
    return queue


def in_threads(work: Callable[[], object], threads: int) -> list:
    with ThreadPoolExecutor(threads) as pool:
        return [f.result() for f in [pool.submit(work) for _ in range(threads)]]


HOST_SOURCE = 4 << 30  # bytes of the memcpy ways' source, read round-robin


@functools.cache
def host_source() -> torch.Tensor:
    """Host memory to copy from, faulted in once (outside the later repeats' times)."""
    return torch.ones(HOST_SOURCE, dtype=torch.uint8)


def fill(fd: int, view: torch.Tensor, offset: int, memory: bool) -> None:
    """`view`'s bytes: the file's at `offset` (`pread`), or with `memory` the host source's (`memmove`,
    which ctypes calls without the GIL, as `os.pread` runs)."""
    if not memory:
        pread(fd, memoryview(view.numpy()), offset)
        return
    source = host_source()  # made by the caller before its threads start (not 16 at once)
    at = offset % (source.numel() - view.numel())
    ctypes.memmove(view.data_ptr(), source.data_ptr() + at, view.numel())


def chunks(spans: dict[str, Span], out: Tensors, fds: dict[Path, int], chunk: int) -> list[tuple[int, int, torch.Tensor]]:
    """(fd, file offset, destination bytes), biggest first, as `catalog.reader` cuts them."""
    pieces = []
    for name, tensor in out.items():
        span, dest = spans[name], _bytes(tensor)
        for at in range(0, span.nbytes, chunk):
            pieces.append((fds[span.file], span.start + at, dest[at: at + chunk]))
    pieces.sort(key=lambda p: -p[2].numel())
    return pieces


def open_files(spans: dict[str, Span]) -> dict[Path, int]:
    return {file: os.open(file, os.O_RDONLY) for file in {s.file for s in spans.values()}}


def close_files(fds: dict[Path, int]) -> None:
    for fd in fds.values():
        os.close(fd)


# ---------------------------------------------------------------------------------------------- ways


def way_reader(spans: dict[str, Span], device: torch.device, **kwargs) -> tuple[Tensors, dict]:
    with ShardReader(spans, device, **kwargs) as reader:
        return reader.read(list(spans)), {}


def way_stage(spans: dict[str, Span], device: torch.device, threads: int, chunk: int, buffers: int,
              fadvise: bool = False, memory: bool = False) -> tuple[Tensors, dict]:
    """The staging path: `pread` (`memory`: `memmove`) into one of `buffers` pinned buffers, copy it on the thread's stream."""
    out = allocate(spans, device)
    fds = open_files(spans)
    if fadvise:
        for fd in fds.values():
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    queue = queued(chunks(spans, out, fds, chunk))
    ready = torch.cuda.current_stream(device) if device.type == "cuda" else None
    if memory:
        host_source()

    def work() -> None:
        if ready is None:
            for fd, offset, dest in drain(queue):
                fill(fd, dest, offset, memory)
            return
        stream = torch.cuda.Stream(device)
        stream.wait_stream(ready)
        bufs = [torch.empty(chunk, dtype=torch.uint8, pin_memory=True) for _ in range(buffers)]
        events = [torch.cuda.Event() for _ in range(buffers)]
        for event in events:
            event.record(stream)
        for k, (fd, offset, dest) in enumerate(drain(queue)):
            slot = k % buffers
            events[slot].synchronize()
            staging = bufs[slot][: dest.numel()]
            fill(fd, staging, offset, memory)
            with torch.cuda.stream(stream):
                dest.copy_(staging, non_blocking=True)
                events[slot].record(stream)
        stream.synchronize()

    try:
        in_threads(work, threads)
    finally:
        close_files(fds)
    return out, {}


def part_alloc(spans: dict[str, Span], device: torch.device) -> tuple[Tensors | None, dict]:
    allocate(spans, device)
    return None, {}


def part_read(spans: dict[str, Span], device: torch.device, threads: int, chunk: int, memory: bool = False) -> tuple[None, dict]:
    """Every byte `pread` (`memory`: `memmove`) into one pinned buffer per thread, nothing copied."""
    fds = open_files(spans)
    queue = queued([(fds[s.file], s.start + at, min(chunk, s.nbytes - at)) for s in spans.values() for at in range(0, s.nbytes, chunk)])
    if memory:
        host_source()

    def work() -> None:
        buf = torch.empty(chunk, dtype=torch.uint8, pin_memory=device.type == "cuda")
        for fd, offset, n in drain(queue):
            fill(fd, buf[:n], offset, memory)

    try:
        in_threads(work, threads)
    finally:
        close_files(fds)
    return None, {}


def part_copy(spans: dict[str, Span], device: torch.device, threads: int, chunk: int, buffers: int) -> tuple[None, dict]:
    """Every destination chunk copied from pinned buffers (their bytes unread), on each thread's stream."""
    out = allocate(spans, device)
    queue = queued([dest for _, _, dest in chunks(spans, out, dict.fromkeys({s.file for s in spans.values()}, -1), chunk)])
    ready = torch.cuda.current_stream(device)

    def work() -> None:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(ready)
        bufs = [torch.empty(chunk, dtype=torch.uint8, pin_memory=True) for _ in range(buffers)]
        with torch.cuda.stream(stream):
            for k, dest in enumerate(drain(queue)):
                dest.copy_(bufs[k % buffers][: dest.numel()], non_blocking=True)
        stream.synchronize()

    in_threads(work, threads)
    return None, {}


class Driver:
    """cuMemHostRegister / cuMemHostUnregister through libcuda (their errors leave the runtime's last error alone)."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.lib.cuMemHostRegister_v2.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
        self.lib.cuMemHostUnregister.argtypes = [ctypes.c_void_p]
        self.lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]

    def _check(self, rc: int, what: str) -> None:
        if rc:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(rc, ctypes.byref(name))
            raise RuntimeError(f"{what}: {name.value.decode() if name.value else rc}")

    def register(self, ptr: int, nbytes: int, flags: int = READ_ONLY) -> None:
        self._check(self.lib.cuMemHostRegister_v2(ptr, nbytes, flags), "cuMemHostRegister")

    def unregister(self, ptr: int) -> None:
        self._check(self.lib.cuMemHostUnregister(ptr), "cuMemHostUnregister")


DRIVER: Driver | None = None


def driver() -> Driver:
    global DRIVER
    if DRIVER is None:
        DRIVER = Driver()
    return DRIVER


class Mapped:
    """The shards mmapped read-only, each seen as one uint8 tensor (its address is the mapping's)."""

    def __init__(self, files: set[Path], populate: bool = False) -> None:
        self.maps, self.bases = {}, {}
        flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate else 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # not writable: only read from
            for file in files:
                with open(file, "rb") as f:
                    self.maps[file] = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
                self.bases[file] = torch.frombuffer(self.maps[file], dtype=torch.uint8)

    def close(self) -> None:
        self.bases = {}
        for mm in self.maps.values():
            mm.close()


Piece = tuple[Path, int, int, list[tuple[int, torch.Tensor]]]  # file, start, end (page-aligned), (file offset, destination bytes)


def pieces_of(spans: dict[str, Span], out: Tensors, piece: int) -> list[Piece]:
    """The page-aligned `piece`-byte ranges of the files that hold requested bytes, each with the
    parts of tensors that lie in it."""
    found: dict[tuple[Path, int], list[tuple[int, torch.Tensor]]] = {}
    for name, tensor in out.items():
        span, dest = spans[name], _bytes(tensor)
        for k in range(span.start // piece, (span.start + span.nbytes - 1) // piece + 1) if span.nbytes else ():
            lo, hi = max(k * piece, span.start), min((k + 1) * piece, span.start + span.nbytes)
            found.setdefault((span.file, k), []).append((lo, dest[lo - span.start: hi - span.start]))
    sizes = {file: -(-file.stat().st_size // PAGE) * PAGE for file, _ in found}
    return [(file, k * piece, min((k + 1) * piece, sizes[file]), parts) for (file, k), parts in sorted(found.items())]


def way_register(spans: dict[str, Span], device: torch.device, threads: int, piece: int, depth: int = 2,
                 populate: bool = False, map_populate: bool = False) -> tuple[Tensors, dict]:
    """Copies straight from the mapped page cache, registered a piece at a time."""
    t0 = time.perf_counter()
    mapped = Mapped({s.file for s in spans.values()}, populate=map_populate)
    map_s = time.perf_counter() - t0
    out = allocate(spans, device)
    queue = queued(pieces_of(spans, out, piece))
    ready = torch.cuda.current_stream(device) if device.type == "cuda" else None
    cuda = driver() if ready is not None else None

    def work() -> dict[str, float]:
        took = {"populate": 0.0, "register": 0.0, "unregister": 0.0}
        stream = torch.cuda.Stream(device) if ready is not None else None
        if stream is not None:
            stream.wait_stream(ready)
        pending: deque[tuple[int, torch.cuda.Event]] = deque()

        def retire() -> None:
            ptr, event = pending.popleft()
            event.synchronize()
            t = time.perf_counter()
            cuda.unregister(ptr)
            took["unregister"] += time.perf_counter() - t

        try:
            for file, start, end, parts in drain(queue):
                base = mapped.bases[file]
                if stream is None:
                    for at, dest in parts:
                        dest.copy_(base[at: at + dest.numel()])
                    continue
                t = time.perf_counter()
                if populate:
                    mapped.maps[file].madvise(MADV_POPULATE_READ, start, end - start)
                took["populate"] += time.perf_counter() - t
                t = time.perf_counter()
                cuda.register(base.data_ptr() + start, end - start)
                took["register"] += time.perf_counter() - t
                with torch.cuda.stream(stream):
                    for at, dest in parts:
                        dest.copy_(base[at: at + dest.numel()], non_blocking=True)
                    event = torch.cuda.Event()
                    event.record(stream)
                pending.append((base.data_ptr() + start, event))
                if len(pending) > depth:
                    retire()
        finally:
            while pending:
                retire()
        return took

    try:
        took = in_threads(work, threads)
    finally:
        mapped.close()
    return out, {"map_s": round(map_s, 4)} | {f"{k}_cpu_s": round(sum(t[k] for t in took), 3) for k in took[0]}


def bind(device: torch.device) -> None:
    """Make the device's primary context current in this thread (a runtime call that needs one):
    the driver's calls use the thread's context, and a fresh thread has none (CUDA_ERROR_INVALID_CONTEXT)."""
    torch.cuda.Stream(device)


def way_register_phases(spans: dict[str, Span], device: torch.device, threads: int, piece: int) -> tuple[Tensors, dict]:
    """Every piece registered, then every copy, then every unregistration: each phase timed."""
    mapped = Mapped({s.file for s in spans.values()})
    out = allocate(spans, device)
    plan = pieces_of(spans, out, piece)
    cuda, ready = driver(), torch.cuda.current_stream(device)
    phases = {}
    try:
        t = time.perf_counter()
        registered = queued(plan)

        def register() -> None:
            bind(device)
            for file, start, end, _ in drain(registered):
                cuda.register(mapped.bases[file].data_ptr() + start, end - start)

        in_threads(register, threads)
        phases["register_s"] = round(time.perf_counter() - t, 4)
        t = time.perf_counter()
        copies = queued(plan)

        def copy() -> None:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(ready)
            with torch.cuda.stream(stream):
                for file, _, _, parts in drain(copies):
                    for at, dest in parts:
                        dest.copy_(mapped.bases[file][at: at + dest.numel()], non_blocking=True)
            stream.synchronize()

        in_threads(copy, threads)
        phases["copy_s"] = round(time.perf_counter() - t, 4)
        t = time.perf_counter()
        unregistered = queued(plan)

        def unregister() -> None:
            bind(device)
            for file, start, _, _ in drain(unregistered):
                cuda.unregister(mapped.bases[file].data_ptr() + start)

        in_threads(unregister, threads)
        phases["unregister_s"] = round(time.perf_counter() - t, 4)
    finally:
        mapped.close()
    return out, phases


# ---------------------------------------------------------------------------------------------- runs


def ways(grid: bool, shards: int, device: torch.device) -> list[tuple[str, Callable, dict, bool]]:
    """(label, function, arguments, compared with safetensors)."""
    chosen: list[tuple[str, Callable, dict, bool]] = [
        ("reader", way_reader, {}, True),
        ("part alloc", part_alloc, {}, False),
        ("part pread T16/C16", part_read, {"threads": 16, "chunk": 16 * MiB}, False),
        ("part pread T16/C1", part_read, {"threads": 16, "chunk": 1 * MiB}, False),
        ("part memcpy T16/C16", part_read, {"threads": 16, "chunk": 16 * MiB, "memory": True}, False),
        ("part memcpy T8/C16", part_read, {"threads": 8, "chunk": 16 * MiB, "memory": True}, False),
    ]
    if device.type == "cuda":
        chosen += [
            ("part copy T16/C16/B2", part_copy, {"threads": 16, "chunk": 16 * MiB, "buffers": 2}, False),
            ("part copy T16/C2/B2", part_copy, {"threads": 16, "chunk": 2 * MiB, "buffers": 2}, False),
        ]
    chosen += [(f"stage memcpy T16/C{c}/B2", way_stage, {"threads": 16, "chunk": c * MiB, "buffers": 2, "memory": True}, False)
               for c in (8, 16)]
    chosen += [(f"register T16/P{p}", way_register, {"threads": 16, "piece": p * MiB}, True) for p in (64, 256)]
    if grid:
        chosen += [(f"stage T16/C{c}/B{b}", way_stage, {"threads": 16, "chunk": c * MiB, "buffers": b}, True)
                   for c in (1, 2, 4, 8, 16, 32, 64) for b in (2, 3, 4)]
        chosen += [(f"stage T{t}/C{c}/B{b}", way_stage, {"threads": t, "chunk": c * MiB, "buffers": b}, True)
                   for t in (8, 12, 24) for c in (4, 16) for b in (2, 4)]
        chosen += [("stage T16/C16/B2 fadvise", way_stage, {"threads": 16, "chunk": 16 * MiB, "buffers": 2, "fadvise": True}, True)]
        chosen += [(f"register T{t}/P{p}", way_register, {"threads": t, "piece": p * MiB}, True)
                   for t, p in ((16, 16), (16, 1024), (8, 64), (24, 64), (16, 64))]
        chosen += [("register T16/P64/depth4", way_register, {"threads": 16, "piece": 64 * MiB, "depth": 4}, True),
                   ("register T16/P64 +populate", way_register, {"threads": 16, "piece": 64 * MiB, "populate": True}, True),
                   ("register T16/P64 MAP_POPULATE", way_register, {"threads": 16, "piece": 64 * MiB, "map_populate": True}, True),
                   (f"register whole T{shards}", way_register, {"threads": shards, "piece": 1 << 40}, True)]
        if device.type == "cuda":
            chosen += [("register phases T16/P256", way_register_phases, {"threads": 16, "piece": 256 * MiB}, True)]
    else:
        chosen += [(f"stage T16/C{c}/B{b}", way_stage, {"threads": 16, "chunk": c * MiB, "buffers": b}, True)
                   for c, b in ((16, 2), (4, 3), (8, 4))]
    return chosen


def identical(got: Tensors, expected: Tensors) -> bool:
    return got.keys() == expected.keys() and all(torch.equal(got[k], v) for k, v in expected.items())


def measure(label: str, fn: Callable, kwargs: dict, spans: dict[str, Span], device: torch.device, repeats: int,
            expected: Tensors | None) -> dict:
    seconds, notes, same = [], [], None
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    for k in range(repeats):
        release(device)
        sync(device)
        start = time.perf_counter()
        out, note = fn(spans, device, **kwargs)
        sync(device)
        seconds.append(time.perf_counter() - start)
        notes.append(note)
        if k == 0 and expected is not None and out is not None:
            same = identical(out, expected)
        del out
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime) / repeats
    best = min(range(repeats), key=lambda k: seconds[k])
    return {"way": label, "first_s": round(seconds[0], 4), "best_s": round(seconds[best], 4), "seconds": [round(s, 4) for s in seconds],
            "cpu_s": round(cpu, 3), "identical": same, "notes": notes[best]}


def checkpoint(size: str, work: Path, device: torch.device) -> list[Path]:
    path = work / size
    if not (path / "model.safetensors.index.json").is_file():
        built = synth.build(size, path, device="cuda" if device.type == "cuda" else "cpu")
        print(f"built {size} in {built.build_seconds:.1f} s", flush=True)
    return checkpoint_shards(path)


def print_table(size: str, rows: list[dict], total: int, pinned: float | None) -> None:
    print(f"\n{size}: {total / 1e9:.2f} GB; pinned copy {pinned / 1e9 if pinned else float('nan'):.1f} GB/s "
          f"(the bytes in {total / pinned if pinned else float('nan'):.3f} s)")
    print(f"{'way':34} {'first s':>8} {'best s':>8} {'GB/s':>6} {'of copy':>7} {'cpu s':>6} identical  notes")
    for r in rows:
        if "error" in r:
            print(f"{r['way']:34} error: {r['error']}")
            continue
        rate = total / r["best_s"]
        frac = f"{rate / pinned:.2f}" if pinned else ""
        print(f"{r['way']:34} {r['first_s']:8.3f} {r['best_s']:8.3f} {rate / 1e9:6.1f} {frac:>7} {r['cpu_s']:6.2f} "
              f"{str(r['identical']):9}  {json.dumps(r['notes']) if r['notes'] else ''}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["small"], choices=list(synth.SHAPES))
    parser.add_argument("--grid", nargs="*", default=[], help="sizes to try every knob on (the others: a short list)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work", type=Path, default=Path("/tmp/superweights-read"))
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds after which the remaining ways are skipped")
    parser.add_argument("--only", nargs="*", default=None, help="labels to run (prefixes); all by default")
    args = parser.parse_args(argv)
    started, device = time.perf_counter(), torch.device(args.device)
    record = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "cpus": os.cpu_count(), "sizes": {}}
    for size in args.sizes:
        shards = checkpoint(size, args.work, device)
        warm_page_cache(shards)
        spans = index_shards(shards)
        total = sum(s.nbytes for s in spans.values())
        pinned = pinned_bandwidth(device)
        from safetensors.torch import load_file

        expected = {k: v for shard in shards for k, v in load_file(shard, device=str(device)).items()}
        rows = []
        for label, fn, kwargs, compare in ways(size in args.grid, len(shards), device):
            if args.only is not None and not any(label.startswith(p) for p in args.only):
                continue
            if time.perf_counter() - started > args.deadline:
                rows.append({"way": label, "error": "skipped: past the deadline"})
                continue
            try:
                rows.append(measure(label, fn, kwargs, spans, device, args.repeats, expected if compare else None))
            except Exception as exc:  # noqa: BLE001 - a way that fails is reported, the others still run
                traceback.print_exc()
                rows.append({"way": label, "error": f"{type(exc).__name__}: {exc}"})
            print(json.dumps(rows[-1]), flush=True)
        del expected
        release(device)
        record["sizes"][size] = {"bytes": total, "shards": len(shards), "tensors": len(spans), "pinned_Bps": pinned, "ways": rows}
        print_table(size, rows, total, pinned)
    write_results(record, args.results, f"read-bandwidth-{args.device}-{'-'.join(args.sizes)}")


if __name__ == "__main__":
    main()
