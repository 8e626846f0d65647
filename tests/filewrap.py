"""File objects that misbehave on purpose, for tests of interrupted, paused and failed writes.

A plain module (no pytest import) so that the scripts the tests start in child processes can import it
too, with ``tests/`` on their ``sys.path`` (as ``tests/conftest.py`` puts it for the tests themselves).
"""
from __future__ import annotations

import errno
import os
from typing import IO, Any


class FileWrapper:
    """Stands in for the file ``f``: counts the bytes written in ``n``, hands everything else to ``f``.

    Subclasses override :meth:`write` to fail or stall at a chosen point; the context manager closes
    ``f`` so that the code under test can keep its ``with open(...)`` form.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.n = f, 0

    def write(self, b: bytes) -> int:
        n = self.f.write(b)
        self.n += len(b)
        return n

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes the wrapper lacks (flush, fileno, ...): the real file's
        return getattr(self.f, name)

    def __enter__(self) -> FileWrapper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


class FullDisk(FileWrapper):
    """A file whose file system accepts ``room`` bytes, then fails every write with ENOSPC (tests of full disks)."""

    def __init__(self, f: IO[bytes], room: int = 1024) -> None:
        super().__init__(f)
        self.room = room

    def write(self, b: bytes) -> int:
        if self.n + len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(b)
