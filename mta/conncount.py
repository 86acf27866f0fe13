"""Connections per client IP, counted across the SMTP worker processes.

The table is shared memory (a memfd the service process creates and each
worker maps): one slab of counters per worker slot, each slab written by its
worker only (no lock: a single writer per counter, 4-byte aligned stores),
read by all. The count for an IP is the sum of its bucket over every slab, so
``smtp.max_connections_per_ip`` holds for the whole service, however the
kernel spreads the connections (SO_REUSEPORT hashes them by address and
port). When a worker dies its slab is cleared (by the parent, and again by its
successor), so its connections stop counting with it.

An IP is hashed to one of ``BUCKETS`` buckets: two addresses that share a
bucket share a limit; with 16,384 buckets that is rare, and it can only make
the limit stricter, never looser.
"""

from __future__ import annotations

import mmap
import os
import zlib

BUCKETS = 16384
_CELL = 4  # bytes per counter (unsigned 32 bits)


def table_size(slots: int) -> int:
    return slots * BUCKETS * _CELL


def create_table(slots: int) -> int:
    """A zeroed shared table for ``slots`` workers: its file descriptor (inheritable by children via pass_fds)."""
    fd = os.memfd_create("smtp-connections", 0)
    os.ftruncate(fd, table_size(slots))
    return fd


def _bucket(ip: str) -> int:
    return zlib.crc32(ip.encode()) % BUCKETS


class SharedCounts:
    """One process's view of the table; ``slot`` is the slab it writes (None: read and clear only)."""

    def __init__(self, fd: int, slots: int, slot: int | None) -> None:
        self.slots = slots
        self.slot = slot
        self._map = mmap.mmap(fd, table_size(slots))
        self._cells = memoryview(self._map).cast("I")
        if slot is not None:
            self.clear(slot)

    def clear(self, slot: int) -> None:
        """Forget every connection of ``slot`` (its worker died or starts afresh)."""
        start = slot * BUCKETS * _CELL
        self._map[start:start + BUCKETS * _CELL] = bytes(BUCKETS * _CELL)

    def total(self, ip: str) -> int:
        b = _bucket(ip)
        cells = self._cells
        return sum(cells[s * BUCKETS + b] for s in range(self.slots))

    def add(self, ip: str, delta: int) -> None:
        assert self.slot is not None
        i = self.slot * BUCKETS + _bucket(ip)
        self._cells[i] = max(0, self._cells[i] + delta)

    def close(self) -> None:
        self._cells.release()
        self._map.close()
