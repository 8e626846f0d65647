"""The text-feature disk cache trusts nothing: every defect is recomputed, unwritable disks degrade to memory.

Each case writes a real cache file, damages it the way disks, old versions or other programs do, and
checks what a fresh cache (a "second start") does: which warning names which file, whether the text
encoder ran again, and what ends up on disk.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from filewrap import FullDisk

import partcatseg.checkpoint as ckpt_mod
from partcatseg.modeling import text as text_mod
from partcatseg.modeling.clip import build_clip
from partcatseg.modeling.text import CACHE_FORMAT_VERSION, TextFeatureCache, read_cache_entry

TINY = dict(embed_dim=32, width=64, layers=3, heads=2, patch_size=16, image_size=64,
            text_width=32, text_layers=2, text_heads=2)
NAMES, TEMPLATES = ["cat's head", "dog's tail", "sofa, couch"], ["a photo of a {}.", "a {} in the scene"]
SHAPE = (3, 2, 32)  # names, templates, the tiny text tower's output width


@pytest.fixture
def clip():
    torch.manual_seed(0)
    return build_clip("tiny", tiny=TINY)


@pytest.fixture
def encode_calls(monkeypatch):
    calls = []
    real = text_mod.encode_class_names
    monkeypatch.setattr(text_mod, "encode_class_names", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    return calls


def _warnings(records, level=logging.WARNING):
    return [r.getMessage() for r in records if r.levelno >= level]


def _only_file(directory: Path) -> Path:
    files = sorted(directory.iterdir())
    assert len(files) == 1, files
    return files[0]


def _fresh_entry(clip, tmp_path):
    """Fill the cache once; returns (cache file, the features, the entry's key)."""
    feats = TextFeatureCache(str(tmp_path)).get(clip, NAMES, TEMPLATES).clone()
    path = _only_file(tmp_path)
    return path, feats, path.stem


def test_entry_format_checksum_and_mode(clip, tmp_path):
    path, feats, key = _fresh_entry(clip, tmp_path)
    entry = torch.load(path, weights_only=True)  # plain containers and one tensor: no extra globals
    assert set(entry) == {"format", "version", "key", "names", "templates", "width", "sha256", "features"}
    assert entry["version"] == CACHE_FORMAT_VERSION and entry["key"] == key
    assert (entry["names"], entry["templates"], entry["width"]) == SHAPE
    assert entry["features"].dtype == torch.float32 and torch.equal(entry["features"], feats)
    assert len(entry["sha256"]) == 64
    got, problem = read_cache_entry(str(path), key, SHAPE)
    assert problem is None and torch.equal(got, feats)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def _flip_16_bytes(path: Path, feats: torch.Tensor) -> None:
    raw = bytearray(path.read_bytes())
    start = raw.find(feats.numpy().tobytes())
    assert start > 0, "the features' bytes are stored verbatim in the archive"
    for i in range(16):
        raw[start + 43 + 8 * i] ^= 0x5A  # the high (sign/exponent) byte of 16 floats
    path.write_bytes(bytes(raw))


def _rewrite(path: Path, **changes) -> None:
    entry = torch.load(path, weights_only=True)
    entry.update(changes)
    torch.save(entry, path)


def _digest(t: torch.Tensor) -> str:
    return text_mod._features_digest(t)


CORRUPTIONS = {
    # name: (damage(path, feats, key), expected fragment of the warning)
    "16 flipped bytes": (lambda p, f, k: _flip_16_bytes(p, f), "checksum mismatch"),
    "NaN with a matching checksum": (
        lambda p, f, k: _rewrite(p, features=(g := f.clone().index_fill_(2, torch.tensor([3]), float("nan"))),
                                 sha256=_digest(g)), "6 NaN/inf value(s)"),
    "fp16 with a matching checksum": (
        lambda p, f, k: _rewrite(p, features=f.half(), sha256=_digest(f.half())), "torch.float16, expected torch.float32"),
    "wrong width": (
        lambda p, f, k: _rewrite(p, features=(g := torch.zeros(3, 2, 31)), sha256=_digest(g), width=31),
        "shape (3, 2, 31), expected (3, 2, 32)"),
    "a dict": (lambda p, f, k: torch.save({"features": f}, p), "not a version-2 cache entry"),
    "a list": (lambda p, f, k: torch.save([f], p), "holds a list"),
    "another key's entry": (lambda p, f, k: _rewrite(p, key="0" * 64), "entry for another key"),
    "garbage bytes": (lambda p, f, k: p.write_bytes(b"\x00garbage" * 10),
                      "unreadable (refused by the weights-only unpickler: Unsupported operand 0)"),
    "truncated": (lambda p, f, k: p.write_bytes(p.read_bytes()[:300]), "unreadable"),
    "empty": (lambda p, f, k: p.write_bytes(b""), "empty file (0 bytes)"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_damaged_entry_is_recomputed_with_one_warning_and_rewritten(clip, tmp_path, logs, encode_calls, case):
    damage, fragment = CORRUPTIONS[case]
    path, feats, key = _fresh_entry(clip, tmp_path)
    damage(path, feats, key)
    calls_before = len(encode_calls)
    logs.clear()
    got = TextFeatureCache(str(tmp_path)).get(clip, NAMES, TEMPLATES)
    warnings = _warnings(logs)
    assert len(warnings) == 1, warnings
    assert str(path) in warnings[0] and fragment in warnings[0] and "recomputing" in warnings[0]
    assert len(encode_calls) == calls_before + 1  # the text encoder ran again
    torch.testing.assert_close(got, feats, rtol=0, atol=0)
    # rewritten: the next start reads it without a warning and without encoding
    assert _only_file(tmp_path) == path and read_cache_entry(str(path), key, SHAPE)[1] is None
    logs.clear()
    again = TextFeatureCache(str(tmp_path)).get(clip, NAMES, TEMPLATES)
    assert _warnings(logs) == [] and len(encode_calls) == calls_before + 1 and torch.equal(again, feats)


def test_flipped_bytes_would_have_passed_the_old_shape_check(clip, tmp_path):
    """The damage is real: the file still loads with the right shape, only the values are wrong."""
    path, feats, key = _fresh_entry(clip, tmp_path)
    _flip_16_bytes(path, feats)
    damaged = torch.load(path, weights_only=True)["features"]
    assert damaged.shape == feats.shape
    assert (damaged - feats).abs().max() > 1.0  # far off (unit-norm features)
    assert read_cache_entry(str(path), key, SHAPE)[1].startswith("checksum mismatch")


def test_old_format_bare_tensor_is_recomputed_quietly(clip, tmp_path, logs, encode_calls):
    path, feats, key = _fresh_entry(clip, tmp_path)
    torch.save(feats.clone(), path)  # what the previous version wrote
    logs.clear()
    got = TextFeatureCache(str(tmp_path)).get(clip, NAMES, TEMPLATES)
    assert _warnings(logs) == []
    assert any("old-format entry" in m and str(path) in m for m in _warnings(logs, logging.INFO))
    assert len(encode_calls) == 2 and torch.equal(got, feats)
    assert isinstance(torch.load(path, weights_only=True), dict)  # upgraded in place


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_pickled_payload_in_the_cache_never_runs(clip, tmp_path, logs):
    cache_dir = tmp_path / "cache"
    path, feats, key = _fresh_entry(clip, cache_dir)
    marker = tmp_path / "marker"
    torch.save({"format": "partcatseg-text-features", "features": feats, "x": _Payload(marker)}, path)
    logs.clear()
    got = TextFeatureCache(str(cache_dir)).get(clip, NAMES, TEMPLATES)
    assert not marker.exists() and torch.equal(got, feats)
    assert any("unreadable" in m and "exec" in m for m in _warnings(logs))


def test_full_disk_gives_one_warning_no_temporary_file_and_memory_still_works(clip, tmp_path, logs,
                                                                              monkeypatch, encode_calls):
    real_open = ckpt_mod._open_for_write
    monkeypatch.setattr(ckpt_mod, "_open_for_write", lambda fd: FullDisk(real_open(fd)))
    cache = TextFeatureCache(str(tmp_path))
    a = cache.get(clip, NAMES, TEMPLATES)
    b = cache.get(clip, NAMES[:1], TEMPLATES)
    a2 = cache.get(clip, NAMES, TEMPLATES)
    warnings = _warnings(logs)
    assert len(warnings) == 1, warnings
    assert str(tmp_path) in warnings[0] and "No space left on device" in warnings[0]
    assert "memory" in warnings[0]
    assert cache.write_disabled is not None
    assert list(tmp_path.iterdir()) == []  # neither an entry nor a temporary file
    assert len(encode_calls) == 2 and torch.equal(a, a2) and b.shape == (1, 2, 32)  # a2 came from memory


def _drop_root_privileges() -> list:
    """Command prefix under which a 0555 directory is really read-only (root ignores modes)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a directory read-only for the test")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]


READ_ONLY_SCRIPT = textwrap.dedent("""
    import json, logging, sys, torch
    from partcatseg.modeling import text as T
    from partcatseg.modeling.clip import build_clip
    torch.manual_seed(0)
    clip = build_clip("tiny", tiny=json.loads(sys.argv[2]))
    seen = []
    class Keep(logging.Handler):
        def emit(self, record):
            seen.append([record.levelname, record.getMessage()])
    logging.getLogger("partcatseg").addHandler(Keep())
    logging.getLogger("partcatseg").setLevel(logging.INFO)
    calls = []
    real = T.encode_class_names
    T.encode_class_names = lambda *a, **k: calls.append(list(a[1])) or real(*a, **k)
    cache = T.TextFeatureCache(sys.argv[1])
    known = cache.get(clip, ["cat's head", "dog's tail", "sofa, couch"], ["a photo of a {}.", "a {} in the scene"])
    a = cache.get(clip, ["owl's beak"], ["a photo of a {}."])
    b = cache.get(clip, ["cow's horn"], ["a photo of a {}."])
    a2 = cache.get(clip, ["owl's beak"], ["a photo of a {}."])
    print(json.dumps({"calls": calls, "logs": seen, "same": bool(torch.equal(a, a2)),
                      "shapes": [list(known.shape), list(b.shape)]}))
""")


def test_read_only_directory_one_warning_memory_cache_and_existing_entries_still_read(clip, tmp_path):
    cache_dir = tmp_path / "ro"
    _fresh_entry(clip, cache_dir)  # one valid entry, written while it was writable
    before = sorted(p.name for p in cache_dir.iterdir())
    for p in (tmp_path, cache_dir):
        p.chmod(0o755)
    cache_dir.chmod(0o555)
    try:
        proc = subprocess.run(
            _drop_root_privileges() + [sys.executable, "-c", READ_ONLY_SCRIPT, str(cache_dir), json.dumps(TINY)],
            capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
    finally:
        cache_dir.chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    warnings = [m for level, m in out["logs"] if level == "WARNING"]
    assert len(warnings) == 1, out["logs"]
    assert str(cache_dir) in warnings[0] and "Permission denied" in warnings[0]
    # the valid entry was read (not encoded); each new vocabulary encoded once; the repeat came from memory
    assert out["calls"] == [["owl's beak"], ["cow's horn"]] and out["same"]
    assert out["shapes"] == [[3, 2, 32], [1, 1, 32]]
    assert sorted(p.name for p in cache_dir.iterdir()) == before  # nothing written, no temporary file


# ------------------------------------------------------------------------------------------ concurrency
WRITER_SCRIPT = textwrap.dedent("""
    import os, sys, time, torch
    import partcatseg.checkpoint as ck
    from filewrap import FileWrapper
    from partcatseg.modeling.text import TextFeatureCache, _cache_entry
    cache_dir, key, value, mode, paused, go = sys.argv[1:]
    feats = torch.full((8, 10, 512), float(value))
    real_open = ck._open_for_write

    class PauseHalfway(FileWrapper):  # once, past 100 kB: flushes, signals the test, waits for its go
        done = False
        def write(self, b):
            n = super().write(b)
            if not self.done and self.n > 100_000 and paused != "-":
                self.done = True
                self.f.flush()
                open(paused, "w").close()
                while not os.path.exists(go):
                    time.sleep(0.01)
            return n

    path = os.path.join(cache_dir, key + ".pt")
    if mode == "atomic":
        ck._open_for_write = lambda fd: PauseHalfway(real_open(fd))
        TextFeatureCache(cache_dir)._save(key, feats, path)
    else:  # the old, non-atomic way: straight into the final file name
        with open(path, "wb") as f:
            torch.save(_cache_entry(key, feats), PauseHalfway(f))
    print("done", flush=True)
""")


def _writer(cache_dir, key, value, mode, paused="-", go="-"):
    return subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(cache_dir), key, str(value), mode,
                             str(paused), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")])))


def _wait_for(path: Path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.01)


def _finish(proc):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "done" in out, err[-3000:]


def test_two_processes_writing_one_key_never_expose_a_partial_file(tmp_path):
    key, shape = "k" * 64, (8, 10, 512)
    entry_path = tmp_path / f"{key}.pt"
    # A stops halfway through its write; B writes the same key completely meanwhile
    a = _writer(tmp_path, key, 1.0, "atomic", tmp_path / "a.paused", tmp_path / "a.go")
    _wait_for(tmp_path / "a.paused", a)
    assert not entry_path.exists()  # A's half-written data is only in its temporary file
    (temp,) = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert temp.stat().st_size > 100_000
    assert ckpt_mod.remove_stale_temporaries(str(tmp_path), min_age=0) == []  # locked by live writer A
    b = _writer(tmp_path, key, 2.0, "atomic")
    _finish(b)
    feats, problem = read_cache_entry(str(entry_path), key, shape)
    assert problem is None and float(feats.mean()) == 2.0
    (tmp_path / "a.go").touch()
    _finish(a)
    feats, problem = read_cache_entry(str(entry_path), key, shape)
    assert problem is None and float(feats.mean()) == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.go", "a.paused", entry_path.name])

    # control: the non-atomic writer, paused at the same point, does expose a torn file -- and the
    # reader refuses it instead of accepting it
    control = tmp_path / "control"
    control.mkdir()
    c = _writer(control, key, 3.0, "direct", control / "c.paused", control / "c.go")
    _wait_for(control / "c.paused", c)
    feats, problem = read_cache_entry(str(control / f"{key}.pt"), key, shape)
    assert feats is None and problem.startswith("unreadable")
    (control / "c.go").touch()
    _finish(c)
