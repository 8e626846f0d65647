"""Checkpoints in detectron2's format (and safetensors), loaded safely and saved durably.

Loading
    * ``{"model": state_dict, ...}`` files (detectron2 / the official releases), bare state dicts and
      ``.safetensors`` files; a DDP ``module.`` prefix is stripped, and CAT-Seg CVPR's split
      ``attn.{q,k,v}_proj_weight`` and the fused ``attn.in_proj_weight`` are converted in whichever
      direction the model needs.
    * Shape-mismatched entries are skipped and reported, as detectron2 does (this is how the official
      PartCATSeg training starts from CAT-Seg's ``model_final_base.pth``); every load returns a
      :class:`LoadReport` that is also logged.  A file sharing no key with the model is an error.
    * Pickled files are read with ``torch.load(weights_only=True)`` plus a small allow-list
      (:func:`safe_load_globals`: numpy arrays, dtypes and scalars, found in older detectron2-era
      files).  That covers the official releases, detectron2 training checkpoints and this
      framework's own checkpoints (optimizer, scheduler, GradScaler, hook and per-rank RNG states).
      Anything else -- a pickled class, a ``__reduce__`` payload -- is refused with an
      :class:`UnsafeCheckpointError` naming the file and the globals it wants, and nothing in it runs.
      Loading such a file needs an explicit opt-in: ``trust_pickle=True`` on :class:`Checkpointer` /
      :func:`read_checkpoint_file`, or the environment variable ``PARTCATSEG_TRUST_PICKLE=1`` for
      command lines.  Only do that for files whose source you trust: unpickling runs code.

Saving
    * Atomic and durable: a temporary file ``.tmp-<name>.<host>.<pid>.<random>.partial`` in the
      target directory is written, flushed and fsync'ed, given the mode the umask allows (``0666 & ~umask``), renamed
      over the target, and the directory is fsync'ed.  ``last_checkpoint`` is written the same way,
      and only after the checkpoint file is complete.
    * A failed write (e.g. a full disk) raises :class:`CheckpointWriteError` (an ``OSError`` and a
      :class:`CheckpointError`) that names the path and the cause, removes the temporary file and
      leaves the previous checkpoint and ``last_checkpoint`` untouched.
    * A writer holds an exclusive ``flock`` on its temporary file while writing.  A temporary file of
      this host that nobody holds (or whose writer process is gone) and that is older than
      :data:`STALE_TEMP_SECONDS` is the leftover of a killed save; a :class:`Checkpointer` that
      writes to a directory removes such files when it starts, and logs their names (see
      :func:`remove_stale_temporaries`).  Other ranks and concurrent jobs sharing the directory are
      not disturbed: their temporaries are locked; those of other hosts (a shared network file
      system, where locks may not be shared) are only removed after an hour.

Resume
    :meth:`Checkpointer.resume_or_load` resumes from the file named by ``last_checkpoint``; when that
    file is missing, truncated or unreadable, or ``last_checkpoint`` holds garbage, it falls back to
    the newest loadable ``model_*.pth`` in the directory (``model_final.pth`` first, then by the
    iteration in the name, then by mtime) with a warning naming both files, and if none loads it
    starts from the given weights (``MODEL.WEIGHTS``) with a warning.
"""
from __future__ import annotations

import errno as _errno
import json
import logging
import os
import pickle
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Optional

import torch
from fvcore.common.checkpoint import Checkpointer as _FvcoreCheckpointer
from torch import nn

try:  # POSIX advisory locks mark temporaries that a live writer still owns
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "Checkpointer",
    "LoadReport",
    "CheckpointError",
    "CheckpointWriteError",
    "UnsafeCheckpointError",
    "TRUST_PICKLE_ENV",
    "STALE_TEMP_SECONDS",
    "convert_qkv_layout",
    "atomic_write",
    "atomic_torch_save",
    "checkpoint_problem",
    "read_checkpoint_file",
    "safe_load_globals",
    "load_safetensors",
    "save_safetensors",
    "remove_stale_temporaries",
]

logger = logging.getLogger(__name__)

_QKV = ("q_proj_weight", "k_proj_weight", "v_proj_weight")

#: Environment variable that, set to 1/true/yes, lets command lines load checkpoints that need
#: full unpickling (see :func:`read_checkpoint_file`).
TRUST_PICKLE_ENV = "PARTCATSEG_TRUST_PICKLE"

#: A temporary file younger than this is never treated as a leftover (it may not be locked yet).
STALE_TEMP_SECONDS = 10.0
#: Temporaries of other hosts (or of an older naming scheme) are leftovers only when this old.
_STALE_TEMP_SECONDS_FOREIGN = 3600.0

_TMP_PREFIX = ".tmp-"
_TMP_SUFFIX = ".partial"
# .tmp-<target>.<host>.<pid>.<8 mkstemp characters>.partial
_TMP_NAME = re.compile(r"^\.tmp-(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}\.partial$")
# what an earlier version's mkstemp calls left: .tmp-<8 characters>[.pth]
_OLD_TMP_NAME = re.compile(r"^\.tmp-[A-Za-z0-9_]{8}(\.pth)?$")
_RESUME_CANDIDATE = re.compile(r"^model_(final|\d+)\.pth$")


class CheckpointError(RuntimeError):
    """A file that cannot be used as a checkpoint for this model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that needs full unpickling (arbitrary code) and was therefore not loaded."""

    def __init__(self, message: str, path: str, globals_: list[str]):
        super().__init__(message)
        self.path = path
        self.globals = globals_


class CheckpointWriteError(OSError, CheckpointError):
    """Writing a checkpoint (or another atomically written file) failed; nothing was replaced."""


# ============================================================================ load report
@dataclass
class LoadReport:
    """What a load did: keys the model lacks, keys the file lacks, and skipped shape mismatches."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self, limit: int = 20) -> str:
        lines = [
            f"checkpoint {self.path}: loaded {len(self.loaded)} entries, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape-mismatched (skipped) {len(self.shape_mismatch)}"
        ]
        for title, items in (
            ("shape mismatch (file vs model)", [f"{k}: {a} vs {b}" for k, a, b in self.shape_mismatch]),
            ("missing in file (left at their current values)", _group(self.missing)),
            ("unexpected in file (ignored)", _group(self.unexpected)),
        ):
            if items:
                lines.append(f"  {title}:")
                lines += [f"    {s}" for s in items[:limit]]
                if len(items) > limit:
                    lines.append(f"    ... and {len(items) - limit} more")
        return "\n".join(lines)


def _group(keys: list[str]) -> list[str]:
    """Collapse keys by their first four components for readable reports."""
    groups: dict[str, int] = {}
    for k in keys:
        prefix = ".".join(k.split(".")[:4])
        groups[prefix] = groups.get(prefix, 0) + 1
    return [f"{p}.* ({n})" if n > 1 else p for p, n in groups.items()]


def convert_qkv_layout(state_dict: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Fuse or split attention input projections so the file's layout matches the model's."""
    out = dict(state_dict)
    for key in list(state_dict):
        if key.endswith(".q_proj_weight"):
            base = key[: -len("q_proj_weight")]
            fused = base + "in_proj_weight"
            parts = [base + name for name in _QKV]
            if fused in model_keys and key not in model_keys and all(p in state_dict for p in parts):
                out[fused] = torch.cat([state_dict[p] for p in parts], dim=0)
                for p in parts:
                    out.pop(p)
        elif key.endswith(".in_proj_weight"):
            base = key[: -len("in_proj_weight")]
            if base + "q_proj_weight" in model_keys and key not in model_keys:
                for name, chunk in zip(_QKV, state_dict[key].chunk(3, dim=0)):
                    out[base + name] = chunk
                out.pop(key)
    return out


# ============================================================================ durable atomic writes
_umask_lock = threading.Lock()


def _current_umask() -> int:
    try:  # Linux >= 4.7 reports it without changing it
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:  # the classic read-by-setting; brief, and serialised within this process
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _default_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: ``0666 & ~umask``."""
    return 0o666 & ~_current_umask()


def _try_lock(fd: int) -> Optional[bool]:
    """Exclusive non-blocking flock: True = got it, False = someone holds it, None = locks unsupported."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (_errno.EAGAIN, _errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP, ...: this file system cannot tell


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable; a file system that cannot fsync directories is tolerated."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:
        return  # e.g. Windows: directories cannot be opened
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (_errno.EINVAL, _errno.ENOTSUP, _errno.EOPNOTSUPP, _errno.EBADF, _errno.EACCES,
                             _errno.EPERM, _errno.EISDIR, getattr(_errno, "ENOSYS", -1)):
            logger.warning("could not fsync directory %s after a rename (%s); the new file may not survive "
                           "a power loss", directory, exc)
    finally:
        os.close(fd)


class _RecordingFile:
    """A write-only file object that remembers the ``OSError`` behind a failed write.

    ``torch.save`` turns a failing write into a cryptic ``RuntimeError`` ("unexpected pos",
    "basic_ios::clear"); the recorded error lets us report the real cause (e.g. ENOSPC).
    """

    def __init__(self, f: BinaryIO):
        self._f = f
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        try:
            n = self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise
        return len(data) if n is None else n

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as exc:
            self.error = exc
            raise


def _open_for_write(fd: int) -> BinaryIO:
    """The binary file object written through (a seam for tests that simulate a full disk)."""
    return os.fdopen(fd, "wb")


def _free_space(directory: str) -> str:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"  # pragma: no cover


def atomic_write(path: str, write: Callable[[BinaryIO], Any], *, what: str = "file") -> None:
    """Write ``path`` atomically and durably through ``write(fileobj)``.

    The data goes to a locked temporary file in the same directory, which is flushed, fsync'ed,
    given mode ``0666 & ~umask`` and renamed over ``path``; then the directory is fsync'ed.  On any
    failure the temporary file is removed and ``path`` keeps its previous content; an ``OSError``
    (including one that ``torch.save`` hides behind a ``RuntimeError``) becomes a
    :class:`CheckpointWriteError` naming ``path`` and the cause.
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    tmp = None
    sink = None
    replaced = False
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix=f"{_TMP_PREFIX}{os.path.basename(path)[:100]}.{_host_token()}.{os.getpid()}.",
            suffix=_TMP_SUFFIX)
        _try_lock(fd)  # held until the file object is closed, i.e. after the rename
        try:
            f = _open_for_write(fd)
        except BaseException:
            os.close(fd)
            raise
        with f:
            sink = _RecordingFile(f)
            write(sink)
            sink.flush()
            os.fsync(f.fileno())
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _default_file_mode())
            else:  # pragma: no cover - Windows
                os.chmod(tmp, _default_file_mode())
            os.replace(tmp, path)
            tmp, replaced = None, True
        _fsync_directory(directory)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass
            except OSError as rm_exc:
                logger.warning("could not remove the temporary file %s (%s)", tmp, rm_exc)
        cause = sink.error if sink is not None and sink.error is not None else exc
        if isinstance(cause, OSError) and isinstance(exc, (OSError, RuntimeError)):
            reason = cause.strerror or str(cause) or type(cause).__name__
            if cause.errno in (_errno.ENOSPC, getattr(_errno, "EDQUOT", -1)):
                reason += f" ({_free_space(directory)} free in {directory})"
            if replaced:  # only closing failed, after the rename
                message = f"error after writing {what} {path}: {reason}; the file is complete but may not be durable"
            else:
                message = (f"could not write {what} {path}: {reason}. {os.path.basename(path)} was not replaced "
                           "(an existing file keeps its previous content) and no temporary file was left behind")
            if cause.errno is not None:
                raise CheckpointWriteError(cause.errno, message) from exc
            raise CheckpointWriteError(message) from exc
        raise


def atomic_torch_save(obj: Any, path: str, *, what: str = "checkpoint") -> None:
    """``torch.save`` ``obj`` to ``path`` via :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f), what=what)


def _atomic_write_text(path: str, text: str, *, what: str = "file") -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), what=what)


def _host_token() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _process_gone(pid: int) -> Optional[bool]:
    """True if no process ``pid`` exists on this host, False if one does, None if we cannot tell."""
    if os.name != "posix":
        return None  # os.kill(pid, 0) is not a probe on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    except OSError:
        return None
    return False


def remove_stale_temporaries(directory: str, *, min_age: float = STALE_TEMP_SECONDS) -> list[str]:
    """Remove temporary files that interrupted atomic writes left in ``directory``; returns their names.

    Only this module's naming scheme (and an earlier version's ``.tmp-XXXXXXXX[.pth]``) is
    considered, and nothing younger than ``min_age`` seconds.  A temporary of this host is a leftover
    when no process holds its lock (writers lock it right after creating it and keep the lock until
    the rename), or, where locks are unsupported, when the process named in it no longer exists.  A
    temporary of another host, or of the older scheme, is a leftover only when unlocked and an hour
    old: locks on a shared network file system need not be visible across hosts.  So other DDP ranks
    and concurrent jobs writing to the same directory keep their temporaries.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    now = time.time()
    host = _host_token()
    for name in sorted(names):
        ours = _TMP_NAME.match(name)
        if not (ours or _OLD_TMP_NAME.match(name)):
            continue
        full = os.path.join(directory, name)
        try:
            fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue  # renamed or removed meanwhile, a symlink, or not ours to read
        try:
            st = os.fstat(fd)
            age = now - st.st_mtime
            if not stat.S_ISREG(st.st_mode) or age < min_age:
                continue
            locked = _try_lock(fd)
            if locked is False:
                continue  # a live writer owns it
            if ours and ours.group("host") == host:
                stale = locked is True or _process_gone(int(ours.group("pid"))) is True
            else:
                stale = age >= max(min_age, _STALE_TEMP_SECONDS_FOREIGN)
            if not stale:
                continue
            try:
                same = os.path.samestat(st, os.stat(full))
            except OSError:
                continue
            if same:
                os.remove(full)
                removed.append(name)
        except OSError as exc:
            logger.debug("could not check or remove %s (%s)", full, exc)
        finally:
            os.close(fd)  # releases our lock
    if removed:
        logger.info("removed %d stale temporary file(s) left by interrupted saves in %s: %s",
                    len(removed), directory, ", ".join(removed))
    return removed


# ============================================================================ safe reading
def _torch_version() -> tuple[int, int]:
    try:
        major, minor = torch.__version__.split("+")[0].split(".")[:2]
        return int(major), int(minor)
    except ValueError:  # pragma: no cover
        return (0, 0)


def safe_load_globals() -> list[Any]:
    """What a weights-only load additionally allows: numpy arrays, dtypes and scalars.

    ``torch.load(weights_only=True)`` already accepts tensors, ``OrderedDict`` (state dicts and
    their ``_metadata``), ``torch.Size``/``device``/dtypes and the plain containers and scalars that
    optimizer, scheduler, GradScaler and RNG states consist of.  Older detectron2-era files may
    also hold numpy arrays or scalars (e.g. converted model-zoo weights, ``np.random.get_state()``),
    pickled under ``numpy.core.multiarray`` (numpy 1) or ``numpy._core.multiarray`` (numpy 2).
    Nothing here can run code: an array's elements go through the same restricted unpickler.
    """
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return []
    try:
        from numpy._core import multiarray as ma  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core import multiarray as ma
    out: list[Any] = [np.ndarray, np.dtype]
    # a dtype instance's class is a numpy.dtypes.*DType subclass on numpy >= 1.25
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes["All"]}
    dtype_classes |= {getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", object)) if n.endswith("DType")}
    out += sorted((c for c in dtype_classes if isinstance(c, type) and c is not np.dtype), key=lambda c: c.__name__)
    if _torch_version() >= (2, 6):  # (object, "pickled.name") pairs: both numpy spellings
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            out += [(ma._reconstruct, f"{module}._reconstruct"), (ma.scalar, f"{module}.scalar")]
    else:  # pragma: no cover - only the installed numpy's spelling
        out += [ma._reconstruct, ma.scalar]
    return out


@contextmanager
def _allow_safe_globals() -> Iterator[None]:
    ctx = getattr(torch.serialization, "safe_globals", None)
    if ctx is None:  # pragma: no cover - torch < 2.5: plain weights-only loading
        yield
        return
    already = set(getattr(torch.serialization, "get_safe_globals", list)())
    # add only what is missing, so leaving the context never removes a user's own allow-list entries
    with ctx([g for g in safe_load_globals() if g not in already]):
        yield


_REFUSAL_MARKERS = (
    "unsupported global", "unsupported class", "was not an allowed global", "call reduce for unrecognized function",
    "can only build", "can only create new object", "can only append to lists",
    "can only setitem", "can only setitems", "persistent_load", "whose module",
)


def _refused_globals(path: str, exc: BaseException) -> Optional[list[str]]:
    """The globals a weights-only load refused, or None if ``exc`` is not such a refusal."""
    text = str(exc)
    if not any(m in text.lower() for m in _REFUSAL_MARKERS):
        return None
    found: list[str] = []
    getter = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if getter is not None:
        try:
            with _allow_safe_globals():
                found = list(getter(path))
        except Exception:  # noqa: BLE001 - legacy (non-zip) files: fall back to the message
            found = []
    if not found:
        for pattern in (r"GLOBAL (\S+?)(?: was not|\s|$)", r"unrecognized function (.+?)(?: which belongs|$)",
                        r"but got (<class '[^']+'>)"):
            found += [m.group(1) for m in re.finditer(pattern, text)]
    return sorted(set(found)) or ["<unknown>"]


def _trust_pickle_from_env() -> bool:
    return os.environ.get(TRUST_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _file_kind(path: str) -> str:
    """"zip" (torch >= 1.6), "pickle" (legacy torch.save), "safetensors" or "unknown", by content."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < (1 << 30):
        return "safetensors"
    return "unknown"


def checkpoint_problem(path: str) -> Optional[str]:
    """A cheap structural check (no tensor data is read): None if ``path`` looks complete, else why not.

    Detects missing, empty and truncated files (a torch zip archive without its central directory
    or with members past the end, a safetensors file shorter than its header says) and files that
    are neither torch nor safetensors checkpoints.  It cannot see flipped bytes inside tensor data.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc})"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_size == 0:
        return "is empty (0 bytes)"
    try:
        kind = _file_kind(path)
        if kind == "zip":
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
            if not any(i.filename.endswith("data.pkl") for i in infos):
                return "is a zip archive without data.pkl, not a PyTorch checkpoint"
            end = max(i.header_offset + i.compress_size for i in infos)
            if end > st.st_size:
                return f"is truncated ({st.st_size} bytes, its directory needs {end})"
        elif kind == "safetensors":
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if 8 + n > st.st_size:
                    return f"is truncated ({st.st_size} bytes, its header alone needs {8 + n})"
                header = json.loads(f.read(n))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
            need = 8 + n + max(ends, default=0)
            if need != st.st_size:
                return f"is truncated or padded ({st.st_size} bytes, its header says {need})"
        elif kind == "unknown":
            return "is not a PyTorch or safetensors checkpoint"
    except (zipfile.BadZipFile, ValueError, KeyError, TypeError, IndexError, OSError) as exc:
        return f"is truncated or corrupt ({type(exc).__name__}: {exc})"
    return None


def load_safetensors(path: str) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file, with tied entries recorded by :func:`save_safetensors` restored."""
    try:
        from safetensors import safe_open
    except ImportError as exc:  # pragma: no cover
        raise CheckpointError(f"reading {path} needs the safetensors package (pip install safetensors)") from exc
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - SafetensorError and friends: an unusable file
        raise CheckpointError(
            f"cannot read safetensors checkpoint {path} ({os.path.getsize(path)} bytes): "
            f"{type(exc).__name__}: {exc}. The file is truncated or is not a safetensors file."
        ) from exc
    aliases = json.loads(metadata.get("partcatseg.aliases", "{}") or "{}")
    for alias, target in aliases.items():
        if target in state and alias not in state:
            state[alias] = state[target]
    return state


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.untyped_storage().data_ptr())


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str,
                     metadata: Optional[Mapping[str, str]] = None) -> None:
    """Save a state dict as ``.safetensors``, atomically (see :func:`atomic_write`).

    dtypes are kept; non-contiguous tensors are made contiguous; entries that are the very same
    tensor (tied weights) are stored once and recorded as aliases in the metadata (restored by
    :func:`load_safetensors`); other tensors sharing storage (e.g. views of one buffer) are copied.
    """
    try:
        from safetensors.torch import save as _st_save
    except ImportError as exc:  # pragma: no cover
        raise CheckpointError(f"writing {path} needs the safetensors package (pip install safetensors)") from exc
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"cannot save {key!r} ({type(value).__name__}) to safetensors: tensors only")
        t = value.detach()
        same = None
        for other_key, other in seen.get(_storage_key(t), []):
            if (other.dtype == t.dtype and other.shape == t.shape and other.stride() == t.stride()
                    and other.storage_offset() == t.storage_offset()):
                same = other_key
                break
        if same is not None:
            aliases[key] = same
            continue
        shares = _storage_key(t) in seen
        seen.setdefault(_storage_key(t), []).append((key, t))
        t = t.to("cpu")
        if shares or not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.contiguous().clone()
        tensors[key] = t
    meta = {"format": "pt"}
    if aliases:
        meta["partcatseg.aliases"] = json.dumps(aliases, sort_keys=True)
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    atomic_write(path, lambda f: f.write(_st_save(tensors, metadata=meta)), what="safetensors checkpoint")


def read_checkpoint_file(path: str, *, trust_pickle: Optional[bool] = None) -> dict[str, Any]:
    """Read a checkpoint safely; returns a dict with a ``"model"`` state dict (plus any extras).

    ``.safetensors`` content never unpickles anything.  Pickled files are loaded with
    ``weights_only=True`` and the :func:`safe_load_globals` allow-list; a file that needs more is
    refused with :class:`UnsafeCheckpointError` -- unless ``trust_pickle`` is true (``None``: the
    ``PARTCATSEG_TRUST_PICKLE`` environment variable decides), in which case it is loaded with
    ``weights_only=False`` and a warning.  Only trust files from sources you trust: unpickling a
    file can run any code it contains.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint file {path} is empty (0 bytes): an interrupted copy or download?")

    def fail(exc: BaseException) -> CheckpointError:
        return CheckpointError(
            f"cannot read checkpoint {path} ({os.path.getsize(path)} bytes): {type(exc).__name__}: {exc}. "
            "The file is truncated or is not a PyTorch checkpoint."
        )

    if _file_kind(path) == "safetensors":
        data: Any = {"model": load_safetensors(path)}
    else:
        try:
            with _allow_safe_globals():
                data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            refused = _refused_globals(path, exc)
            if refused is None:
                raise fail(exc) from exc
            trusted = _trust_pickle_from_env() if trust_pickle is None else bool(trust_pickle)
            if not trusted:
                raise UnsafeCheckpointError(
                    f"refused to load checkpoint {path}: it pickles {', '.join(refused)}, which a weights-only "
                    "load does not allow (official, detectron2 and partcatseg checkpoints never need it); "
                    "unpickling it could run arbitrary code, so nothing in it was executed. If you trust the "
                    f"file's source, pass trust_pickle=True (Checkpointer / read_checkpoint_file) or set "
                    f"{TRUST_PICKLE_ENV}=1, and consider re-saving its weights as .safetensors.",
                    path, refused,
                ) from None
            logger.warning("loading %s with full unpickling (trust_pickle): it pickles %s; this runs whatever "
                           "code the file contains", path, ", ".join(refused))
            try:
                data = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc2:  # noqa: BLE001 - any decoding failure means an unusable file
                raise fail(exc2) from exc2
        except Exception as exc:  # noqa: BLE001 - any decoding failure means an unusable file
            raise fail(exc) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(data).__name__}, expected a dict (state dict)")
    if "model" not in data:
        data = {"model": data}
    if not isinstance(data["model"], dict):
        raise CheckpointError(f"checkpoint {path}: 'model' is a {type(data['model']).__name__}, expected a dict")
    return data


def _as_tensors(state: Mapping[str, Any], path: str) -> dict[str, torch.Tensor]:
    """numpy arrays (some detectron2-era files) become tensors; anything else that is no tensor is an error."""
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            out[k] = v
            continue
        try:
            import numpy as np
        except ImportError:  # pragma: no cover
            np = None
        if np is not None and isinstance(v, (np.ndarray, np.generic)):
            out[k] = torch.as_tensor(np.array(v))
        else:
            raise CheckpointError(f"checkpoint {path}: model entry {k!r} is a {type(v).__name__}, not a tensor")
    return out


# ============================================================================ checkpointer
class Checkpointer(_FvcoreCheckpointer):
    """fvcore's Checkpointer with conversion, a load report, safe reads, durable writes and resume fallback.

    ``Checkpointer(model).load(path)`` loads weights only (returns the remaining checkpoint dict,
    e.g. ``iteration``); pass ``checkpointables=[...]`` to also restore optimizer/scheduler state.
    ``trust_pickle=True`` (or ``PARTCATSEG_TRUST_PICKLE=1``) allows files that need full unpickling;
    see :func:`read_checkpoint_file`.  With a ``save_dir`` it writes to, stale temporary files of
    interrupted saves are removed at construction (see :func:`remove_stale_temporaries`).
    """

    def __init__(self, model: nn.Module, save_dir: str = "", *, save_to_disk: bool = True,
                 trust_pickle: Optional[bool] = None, **checkpointables: Any):
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.last_report: Optional[LoadReport] = None
        self.trust_pickle = trust_pickle
        self._preloaded: Optional[tuple[str, dict[str, Any]]] = None
        # after resume_or_load(resume=True): the file resumed from, or "" when none could be loaded
        self._resumed_from: Optional[str] = None
        if save_dir and save_to_disk and os.path.isdir(save_dir):
            remove_stale_temporaries(save_dir)

    # ------------------------------------------------------------------ loading
    def _load_file(self, f: str) -> dict[str, Any]:
        if self._preloaded is not None and self._preloaded[0] == f:
            data = self._preloaded[1]
            self._preloaded = None
        else:
            data = read_checkpoint_file(f, trust_pickle=self.trust_pickle)
        state = _as_tensors(data["model"], f)
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        data["model"] = convert_qkv_layout(state, set(self.model.state_dict()))
        data["__path__"] = f
        return data

    def _load_model(self, checkpoint: Any):
        path = checkpoint.pop("__path__", "<memory>")
        file_keys = set(checkpoint["model"])
        model_state = self.model.state_dict()
        model_keys = set(model_state)
        if not file_keys & model_keys:
            sample = sorted(file_keys)[:3]
            raise CheckpointError(
                f"checkpoint {path} shares no parameter name with {type(self.model).__name__} "
                f"(file keys look like {sample}; model keys like {sorted(model_keys)[:3]}): wrong model or config?"
            )
        incompatible = super()._load_model(checkpoint)
        report = LoadReport(
            path=path,
            missing=sorted(incompatible.missing_keys),
            unexpected=sorted(incompatible.unexpected_keys),
            shape_mismatch=[(k, tuple(a), tuple(b)) for k, a, b in incompatible.incorrect_shapes],
        )
        skipped = {k for k, _, _ in report.shape_mismatch}
        report.loaded = sorted((file_keys & model_keys) - skipped)
        if report.missing:  # a tied entry (one tensor under two names) is loaded through its twin
            def view(t: torch.Tensor) -> Optional[tuple]:
                if t.device.type == "meta" or t.numel() == 0 or t.data_ptr() == 0:
                    return None
                return (t.device, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)

            loaded = set(report.loaded)
            loaded_views = {view(t) for k, t in model_state.items() if k in loaded} - {None}
            report.missing = [k for k in report.missing if view(model_state[k]) not in loaded_views]
        self.last_report = report
        (logger.info if report.clean else logger.warning)(report.summary())
        return incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        pass  # replaced by LoadReport.summary(), logged in _load_model

    def load_weights(self, path: str, *, strict: bool = False) -> LoadReport:
        """Load only the model weights (``.pth`` or ``.safetensors``) and return the report;
        ``strict`` turns any mismatch into an error."""
        self.load(path, checkpointables=[])
        report = self.last_report
        if strict and not report.clean:
            raise CheckpointError("strict load failed:\n" + report.summary())
        return report

    # ------------------------------------------------------------------ resume
    def _tag_path(self) -> str:
        return os.path.join(self.save_dir, "last_checkpoint")

    def _read_tag(self) -> tuple[Optional[str], Optional[str]]:
        """(path named by last_checkpoint or None, problem with it or None)."""
        tag = self._tag_path()
        try:
            with open(tag, "rb") as f:
                raw = f.read(4097)
        except FileNotFoundError:
            return None, f"{tag} does not exist"
        except OSError as exc:
            return None, f"{tag} cannot be read ({exc})"
        try:
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            name = None
        if (not name or len(raw) > 4096 or name in (".", "..") or any(c in name for c in "/\\\0\n\r")
                or not name.isprintable()):
            return None, f"{tag} does not name a checkpoint file (it holds {raw[:60]!r})"
        path = os.path.join(self.save_dir, name)
        problem = checkpoint_problem(path)
        if problem is not None:
            return path, f"{tag} names {path}, which {problem}"
        return path, None

    def _fallback_candidates(self, exclude: Optional[str]) -> list[str]:
        """``model_*.pth`` in save_dir, newest first: model_final, then by iteration, then by mtime."""
        try:
            names = os.listdir(self.save_dir)
        except OSError:
            return []
        ranked = []
        for name in names:
            m = _RESUME_CANDIDATE.match(name)
            full = os.path.join(self.save_dir, name)
            if not m or (exclude is not None and os.path.abspath(full) == os.path.abspath(exclude)):
                continue
            try:
                mtime = os.stat(full).st_mtime
            except OSError:
                continue
            order = (1, 0) if m.group(1) == "final" else (0, int(m.group(1)))
            ranked.append((order, mtime, full))
        ranked.sort(reverse=True)
        return [full for _, _, full in ranked]

    def get_checkpoint_file(self) -> str:
        """The checkpoint a resume would use: what ``last_checkpoint`` names if that file looks complete,
        else the newest ``model_*.pth`` that does; "" if there is no ``last_checkpoint`` or no such file.
        After :meth:`resume_or_load`, the file actually resumed from ("" if none could be loaded)."""
        if self._resumed_from is not None:
            return self._resumed_from
        if not os.path.exists(self._tag_path()):
            return ""
        named, problem = self._read_tag()
        if problem is None:
            return named
        for candidate in self._fallback_candidates(exclude=named):
            if checkpoint_problem(candidate) is None:
                return candidate
        return ""

    def has_checkpoint(self) -> bool:
        """Whether ``resume_or_load(resume=True)`` has something to resume from (see :meth:`get_checkpoint_file`)."""
        return bool(self.get_checkpoint_file())

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Resume from the last checkpoint in ``save_dir`` (all checkpointables) or load ``path`` (weights only).

        Without a ``last_checkpoint`` file, or with ``resume=False``, this loads ``path`` like fvcore.
        If the file ``last_checkpoint`` names cannot be loaded, the newest loadable ``model_*.pth``
        is used instead, and if none loads, ``path`` (the configured weights) with a warning.
        """
        if not resume or not os.path.exists(self._tag_path()):
            return self.load(path, checkpointables=[])
        named, problem = self._read_tag()
        candidates = ([named] if problem is None else []) + self._fallback_candidates(exclude=named)
        failures = []
        for candidate in candidates:
            quick = checkpoint_problem(candidate) if candidate != named else None
            if quick is not None:
                failures.append(f"{candidate} {quick}")
                continue
            try:
                data = read_checkpoint_file(candidate, trust_pickle=self.trust_pickle)
            except UnsafeCheckpointError:
                raise  # never skip silently past a file that tries to run code
            except (CheckpointError, OSError) as exc:
                if candidate == named:
                    problem = f"{self._tag_path()} names {named}, which cannot be loaded ({exc})"
                else:
                    failures.append(f"{candidate} ({exc})")
                continue
            if candidate != named:
                logger.warning("%s; resuming from %s instead (the newest loadable checkpoint there)",
                               problem, candidate)
            self._preloaded = (candidate, data)
            self._resumed_from = candidate
            return self.load(candidate)
        tried = "; ".join(failures) if failures else "no model_*.pth files"
        logger.warning("%s, and no other checkpoint in %s can be loaded (%s): not resuming; starting from "
                       "MODEL.WEIGHTS = %s", problem, self.save_dir, tried,
                       path or "'' (the model's own initialisation)")
        self._resumed_from = ""
        return self.load(path, checkpointables=[])

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        atomic_torch_save(data, path)
        self.logger.info("Saved checkpoint to %s", path)
        self.tag_last_checkpoint(basename)

    def save_weights(self, path: str) -> str:
        """Save only the model weights, atomically: ``.safetensors`` (no pickle) or ``.pth`` (``{"model": ...}``).

        A bare name is placed in ``save_dir``.  Returns the path (written only where ``save_to_disk``).
        """
        if not os.path.dirname(path) and self.save_dir:
            path = os.path.join(self.save_dir, path)
        if self.save_to_disk:
            state = self.model.state_dict()
            if path.endswith(".safetensors"):
                save_safetensors(state, path)
            else:
                atomic_torch_save({"model": state}, path)
            self.logger.info("Saved model weights to %s", path)
        return path

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        _atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename,
                           what="checkpoint tag")
        self._resumed_from = None
