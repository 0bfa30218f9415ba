"""Count how often files are opened, from the kernel's side (inotify), whatever opens them:
Python, safetensors' Rust reader, or a memory map. Linux only."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

IN_OPEN = 0x00000020
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len


class OpenCounter:
    def __init__(self, paths: list[Path]) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        for path in paths:
            if self.libc.inotify_add_watch(self.fd, str(path).encode(), IN_OPEN) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")

    def count(self) -> int:
        """Opens seen since the last call."""
        opens = 0
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return opens
            offset = 0
            while offset < len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                opens += bool(mask & IN_OPEN)
                offset += _EVENT.size + length

    def close(self) -> None:
        os.close(self.fd)
