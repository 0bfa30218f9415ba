"""Read safetensors tensors onto a device in parallel: the scan's load is the cost of one read.

`safetensors.torch.load_file(shard, device="cuda")` reads one tensor at a time into pageable
host memory and copies it over, one transfer at a time. Here `threads` workers each
`pread` byte ranges of the shards (from the page cache or the disk) into a pinned staging
buffer and copy it to the device on their own CUDA stream while they read the next range into a
second buffer: the reads run in parallel and overlap the host-to-device copies. For the CPU the
workers read straight into the tensors' memory.

The chunks are small (4 MiB) so that the staging buffers of every worker fit in the CPU's last-level
cache: a byte then crosses the host's memory once (read from the page cache) instead of three
times (also written to and read back from a buffer in DRAM), which is what bounds a staging read
(benchmarks/README.md). Small chunks mean thousands of copies, so the copies and their events go
straight to the CUDA driver through ctypes, which lets go of the GIL for each call; through torch
each chunk would hold it for tens of microseconds and the workers would queue for it.

The header is parsed here (8-byte little-endian length, JSON, then the data); a header that does
not describe the file (cut short, offsets past its end) raises `ValueError` before any read.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, SimpleQueue

import torch

from catalog.safetensors_header import read_header

DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
CHUNK = 4 << 20  # bytes per read and per copy: 16 workers' two buffers (128 MiB) stay in a server CPU's cache
BATCH = 1 << 30  # bytes read at a time when they are converted to another dtype


@dataclass(frozen=True)
class Span:
    """Where one tensor's bytes lie in a shard."""

    file: Path
    start: int  # absolute byte offset in the file
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def index_shards(files: Iterable[Path]) -> dict[str, Span]:
    """Every tensor of the shards by name, from their headers."""
    spans: dict[str, Span] = {}
    for file in files:
        spans |= _header(Path(file))
    return spans


def _header(file: Path) -> dict[str, Span]:
    spans = {}
    for name, entry in read_header(file).items():
        if entry.dtype not in DTYPES:
            raise ValueError(f"{file.name}: tensor {name} has dtype {entry.dtype}, which this reader does not know")
        spans[name] = Span(file, entry.start, entry.nbytes, DTYPES[entry.dtype], entry.shape)
    return spans


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(-1).view(torch.uint8)


def _drained(queue: SimpleQueue) -> Iterator:
    """The queue's items until it is empty (it is filled before any worker starts)."""
    while True:
        try:
            yield queue.get_nowait()
        except Empty:
            return


def _pread(fd: int, into: memoryview, offset: int) -> None:
    done = 0
    while done < len(into):
        n = os.preadv(fd, [into[done:]], offset + done)
        if n == 0:
            raise ValueError("unexpected end of file (truncated?)")
        done += n


class ShardReader:
    """Reads named tensors of a checkpoint onto `device`: floating-point ones in `dtype` (converted
    there, after the read), the others and, without `dtype`, all in the checkpoint's dtypes."""

    def __init__(self, spans: dict[str, Span], device: torch.device, threads: int | None = None, chunk: int | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.spans = spans
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # the workers' threads start on device 0
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype
        self.threads = threads or min(16, os.cpu_count() or 1)
        self.chunk = chunk or CHUNK
        if self.chunk < 1:
            raise ValueError(f"chunk must be a positive number of bytes, not {chunk}")
        self._fds = {file: os.open(file, os.O_RDONLY) for file in {s.file for s in spans.values()}}
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="shard-reader")
        self._local = threading.local()

    @classmethod
    def open(cls, files: Iterable[Path], device: torch.device, **kwargs) -> ShardReader:
        return cls(index_shards(files), device, **kwargs)

    def close(self) -> None:
        self._pool.shutdown()
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The tensors `names`, fully read (and, on a GPU, copied) when this returns. Those converted
        to `dtype` are read in groups of about `BATCH` bytes: a conversion holds its group twice."""
        names = list(names)
        if not any(self._converts(name) for name in names):
            return self._read_all(names)
        out: dict[str, torch.Tensor] = {}
        for batch in self._batches(names):
            out |= {name: t.to(self.dtype) if self._converts(name) else t for name, t in self._read_all(batch).items()}
        return out

    def _converts(self, name: str) -> bool:
        dtype = self.spans[name].dtype
        return self.dtype is not None and dtype.is_floating_point and dtype != self.dtype

    def _batches(self, names: list[str]) -> Iterator[list[str]]:
        batch, held = [], 0
        for name in names:
            batch.append(name)
            held += self.spans[name].nbytes
            if held >= BATCH:
                yield batch
                batch, held = [], 0
        if batch:
            yield batch

    def _read_all(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The tensors in their checkpoint dtypes: chunks taken from one queue by every worker, the
        big ones first, so that the workers finish together."""
        out = {name: torch.empty(self.spans[name].shape, dtype=self.spans[name].dtype, device=self.device) for name in names}
        pieces = []  # (fd, file offset, destination bytes)
        for name, tensor in out.items():
            span, dest = self.spans[name], _bytes_of(tensor)
            for at in range(0, span.nbytes, self.chunk):
                pieces.append((self._fds[span.file], span.start + at, dest[at: at + self.chunk]))
        pieces.sort(key=lambda p: -p[2].numel())
        queue: SimpleQueue = SimpleQueue()
        for piece in pieces:
            queue.put(piece)
        ready = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        inference = torch.is_inference_mode_enabled()  # thread-local: the workers copy into tensors made here
        for done in [self._pool.submit(self._copy, queue, ready, inference) for _ in range(min(self.threads, len(pieces)))]:
            done.result()
        return out

    def _copy(self, queue: SimpleQueue, ready: torch.cuda.Stream | None, inference: bool) -> None:
        with torch.inference_mode(inference):
            self._copy_pieces(_drained(queue), ready)

    def _copy_pieces(self, pieces: Iterable[tuple[int, int, torch.Tensor]], ready: torch.cuda.Stream | None) -> None:
        if ready is None:
            for fd, offset, dest in pieces:
                _pread(fd, memoryview(dest.numpy()), offset)
            return
        staging = self._staging()
        staging.stream.wait_stream(ready)  # the destinations were allocated on the caller's stream
        for k, (fd, offset, dest) in enumerate(pieces):
            slot = k % len(staging.buffers)
            staging.wait(slot)  # this buffer's previous copy has left it
            _pread(fd, staging.views[slot][: dest.numel()], offset)
            staging.send(slot, dest)
        staging.stream.synchronize()

    def _staging(self) -> _Staging:
        """This worker thread's stream, buffers and events (made once)."""
        if not hasattr(self._local, "staging"):
            self._local.staging = _Staging(self.device, self.chunk)
        return self._local.staging


class _Staging:
    """One worker's way to the GPU: a stream, two pinned buffers and an event per buffer. A copy is
    `cuMemcpyHtoDAsync` and `cuEventRecord` on them through ctypes (their handles are the runtime's,
    which are the driver's), or torch's own copy where the CUDA driver library is not found; waiting
    for a buffer is torch's `Event.synchronize`, which lets go of the GIL too."""

    def __init__(self, device: torch.device, chunk: int) -> None:
        torch.cuda.set_device(device)  # a worker thread of this reader: the driver's calls use its current context
        self.stream = torch.cuda.Stream(device)
        self.buffers = [torch.empty(chunk, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self.views = [memoryview(buffer.numpy()) for buffer in self.buffers]
        self.events = [torch.cuda.Event() for _ in self.buffers]
        for event in self.events:
            event.record(self.stream)
        self.driver = _cuda_driver()

    def wait(self, slot: int) -> None:
        self.events[slot].synchronize()

    def send(self, slot: int, dest: torch.Tensor) -> None:
        """Copy the buffer's first `dest.numel()` bytes into `dest` on the stream, then mark the buffer busy."""
        if self.driver is None:
            with torch.cuda.stream(self.stream):
                dest.copy_(self.buffers[slot][: dest.numel()], non_blocking=True)
                self.events[slot].record(self.stream)
            return
        _check(self.driver.cuMemcpyHtoDAsync_v2(dest.data_ptr(), self.buffers[slot].data_ptr(), dest.numel(), self.stream),
               "cuMemcpyHtoDAsync")
        _check(self.driver.cuEventRecord(self.events[slot], self.stream), "cuEventRecord")


@functools.cache
def _cuda_driver() -> ctypes.CDLL | None:
    """The CUDA driver library with the signatures used here; None where there is none (a ROCm build of torch)."""
    if torch.version.cuda is None:
        return None
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    lib.cuMemcpyHtoDAsync_v2.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    lib.cuEventRecord.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    return lib


def _check(result: int, call: str) -> None:
    if result:
        name = ctypes.c_char_p()
        _cuda_driver().cuGetErrorName(result, ctypes.byref(name))
        raise RuntimeError(f"{call} failed: {name.value.decode() if name.value else result}")
