"""Speed and memory benchmark of a configured model (``tools/benchmark.py`` is the command line).

Phases (each in its own subprocess by default, so every peak-memory figure is that phase's own):

* ``build``          model construction (random weights, no network), repeated;
* ``text_cold``      class-name text features with an empty cache (the first start);
* ``text_cached``    the same from the on-disk cache in a fresh process (every later start);
* ``inference``      per-image latency and throughput at batch 1 and at ``--batch-size``;
* ``train_step``     forward + backward + AdamW step at ``--batch-size``;
* ``official`` (with ``--official-root``): the official start-up and batch-1 inference procedure
  around the official network code (:mod:`partcatseg.benchmark_official`) on the same weights,
  timed interleaved with ours on the same image, plus the largest output difference
  (``official_parity``);
* ``accuracy`` (on request): every speed mode's outputs against the default fp32 path
  (:mod:`partcatseg.benchmark_accuracy`), on ``--fixture`` (the parity fixture with its rule-filled
  weights) or on a synthetic image with ``--weights`` / seeded random weights.

Timings use ``time.perf_counter`` after warm-up runs (CUDA is synchronised); each figure is the
median with quartiles, min and max of the repeats.  Memory is the peak resident set of the measured
section (Linux ``VmHWM``, restarted through ``/proc/self/clear_refs``; else the process's
``ru_maxrss``), the resident set before it, and ``torch.cuda.max_memory_allocated`` on CUDA.
Nothing here asserts a speed: the numbers are reported, not tested.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

SCHEMA = "partcatseg-benchmark/1"
PHASES = ("build", "text_cold", "text_cached", "inference", "train_step")
OFFICIAL_PHASES = ("official",)
EXTRA_PHASES = ("accuracy",)  # run only when asked for (``--phases accuracy``)

__all__ = [
    "SCHEMA",
    "PHASES",
    "BenchmarkSpec",
    "summarize",
    "peak_rss_mb",
    "current_rss_mb",
    "synthetic_part_vocabulary",
    "run_phase",
    "run_benchmark",
    "format_table",
    "main",
]


# ----------------------------------------------------------------------------------------- measuring
def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median, quartiles, min, max and the raw samples (seconds)."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("summarize() needs at least one sample")
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0], xs[0], xs[0])
    return {"median": statistics.median(xs), "q1": q1, "q3": q3, "min": xs[0], "max": xs[-1], "n": len(xs),
            "samples": [float(x) for x in samples]}


def peak_rss_mb() -> float:
    """Peak resident set size in MiB since the last :func:`reset_peak_rss` (else since the start).

    Linux's ``VmHWM`` (resettable through ``/proc/self/clear_refs``); elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Restart the peak-RSS measurement at the current RSS (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so that a following section's
    peak RSS counts its own allocations instead of re-using pages an earlier section freed."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def current_rss_mb() -> float:
    """This process's current resident set size in MiB (0 where /proc is unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError):
        return 0.0


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - start)
    return out


class _Memory:
    """Peak memory of the work that follows: CPU resident set (before, peak, peak - before) and CUDA.

    The peak restarts at construction where Linux allows it, so it belongs to this section only
    (``peak_is_section`` False: it is the process's lifetime peak).
    """

    def __init__(self, device: str) -> None:
        import gc

        import torch

        gc.collect()
        release_free_memory()
        self.device = device
        self.section = reset_peak_rss()
        self.rss_before_mb = current_rss_mb()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    def report(self) -> dict[str, Any]:
        import torch

        peak = peak_rss_mb()
        out = {"rss_before_mb": round(self.rss_before_mb, 1), "peak_rss_mb": round(peak, 1),
               "peak_increase_mb": round(peak - self.rss_before_mb, 1), "peak_is_section": self.section}
        if self.device.startswith("cuda"):
            out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return out


# ----------------------------------------------------------------------------------------- set-up
@dataclass
class BenchmarkSpec:
    """Everything a phase needs; JSON-serialisable so phases can run in subprocesses."""

    config_file: str
    opts: list[str] = field(default_factory=list)
    device: str = "cpu"
    batch_size: int = 2
    image_size: tuple[int, int] = (384, 512)
    warmup: int = 1
    repeats: int = 5
    num_classes: int = 0  # 0 = the config's test vocabulary
    text_cache_dir: str = ""  # "" = a fresh temporary directory
    official_root: str = ""
    weights: str = ""  # checkpoint to load; "" = seeded random weights
    seed: int = 0
    random_text: bool = False  # random unit text features instead of encoding (class-scaling runs)
    fixture: str = ""  # accuracy phase: a parity fixture (its config opts, rule weights and record)
    accuracy_modes: list[str] = field(default_factory=list)  # [] = the default modes


def synthetic_part_vocabulary(num_classes: int):
    """A PartVocabulary of ``num_classes`` "object N's part M" classes (6 parts per object).

    Part names rotate through a pool of about num_classes/3 names, so the stage-1 vocabulary grows
    like a real one (Pascal-Part-116: 42 parts, 16 objects).
    """
    from .vocab import PartVocabulary

    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}: expected a positive number")
    pool = max(6, num_classes // 3)
    names = []
    for i in range(num_classes):
        obj, slot = divmod(i, 6)
        names.append(f"object {obj}'s part {(obj * 3 + slot) % pool}")
    return PartVocabulary(names)


class RandomTextFeatures:
    """Stands in for :class:`~partcatseg.modeling.text.TextFeatureCache` in class-scaling runs.

    The head's cost does not depend on the text features' values, and encoding a synthetic
    vocabulary of 800+ classes with 80 templates takes ~10 minutes on a CPU; this returns seeded
    random unit vectors of the right shape instead.  Never used for accuracy figures.
    """

    cache_dir = None

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def get(self, clip_model, names, templates, synonyms: str = "average"):
        import torch

        g = torch.Generator().manual_seed(self.seed + len(names))
        dim = clip_model.text_projection.shape[1]
        feats = torch.nn.functional.normalize(torch.randn(len(names), len(templates), dim, generator=g), dim=-1)
        return feats.to(clip_model.token_embedding.weight.device)


def _cfg(spec: BenchmarkSpec):
    from .config import setup_cfg

    opts = list(spec.opts) + ["MODEL.DEVICE", spec.device]
    if spec.text_cache_dir:
        opts += ["MODEL.TEXT_CACHE_DIR", spec.text_cache_dir]
    return setup_cfg(spec.config_file, opts)


def _build(spec: BenchmarkSpec):
    """The configured model in eval mode: ``spec.weights`` if given, else seeded random weights
    (``MODEL.WEIGHTS`` is a training initialisation and is not read: speed does not depend on it)."""
    import torch

    from .modeling import build_model

    cfg = _cfg(spec)
    torch.manual_seed(spec.seed)
    model = build_model(cfg)
    if spec.weights:
        from .checkpoint import Checkpointer

        Checkpointer(model).load_weights(spec.weights)
    if spec.random_text:
        model.text_cache = RandomTextFeatures(spec.seed)
    if spec.num_classes:
        _set_vocabulary(model, spec.num_classes)
    return model.eval()


def _is_part_model(model) -> bool:
    return hasattr(model, "vocab_tensors")


def _set_vocabulary(model, num_classes: int) -> None:
    vocab = synthetic_part_vocabulary(num_classes)
    if _is_part_model(model):
        model.set_test_vocabulary(vocab)
    elif hasattr(model, "test_obj_classes"):  # CAT-Seg baseline: Oracle-Obj over the synthetic objects
        model.set_test_vocabulary(vocab.classes, vocab.object_classes)
    else:
        model.set_test_vocabulary(vocab.classes)


def _text_features(model):
    if _is_part_model(model):
        return model.vocab_tensors(model.test_vocab)
    return model.text_features(model.test_class_names)


def _reset_text_caches(model) -> None:
    """Forget every in-memory text feature (as a new process would) but keep the disk cache."""
    from .modeling.text import TextFeatureCache, forget_text_fingerprint

    model.text_cache = TextFeatureCache(model.text_cache.cache_dir)
    if hasattr(model, "_vocab_tensors"):
        model._vocab_tensors = {}
    forget_text_fingerprint(model.clip_model)


def _records(model, spec: BenchmarkSpec, n: int, train: bool = False) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(spec.seed)
    h, w = spec.image_size
    out = []
    for i in range(n):
        rec: dict[str, Any] = {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
                               "height": h, "width": w}
        if train:
            if _is_part_model(model):
                rec["sem_seg"] = torch.randint(0, len(model.train_obj_classes), (h, w), generator=g)
                rec["obj_part_sem_seg"] = torch.randint(0, len(model.train_vocab.classes), (h, w), generator=g)
            else:
                labels = torch.randint(0, len(model.train_class_names), (h, w), generator=g)
                rec["sem_seg"] = rec["obj_part_sem_seg"] = labels
        elif hasattr(model, "test_obj_classes"):
            rec["object_class"] = i % len(model.test_obj_classes)
        out.append(rec)
    return out


def _model_info(model) -> dict[str, Any]:
    """The vocabulary sizes and the class chunk in effect, reported with every phase that built a model."""
    if _is_part_model(model):
        v = model.test_vocab
        vocab = {"classes": len(v.classes), "stage1_classes": v.num_text_classes_stage1,
                 "stage2_classes": v.num_text_classes_stage2, "templates": len(model.templates)}
    else:
        vocab = {"classes": len(model.test_class_names), "templates": len(model.templates)}
    aggregator = getattr(model, "aggregator", None)
    return {"vocabulary": vocab, "class_chunk_effective": getattr(aggregator, "class_chunk", None)}


# ----------------------------------------------------------------------------------------- phases
def _phase_build(spec: BenchmarkSpec) -> dict:
    mem = _Memory(spec.device)
    times = []
    for _ in range(max(1, spec.repeats)):
        start = time.perf_counter()
        model = _build(spec)
        _sync(spec.device)
        times.append(time.perf_counter() - start)
        del model
    return {"seconds": summarize(times), **mem.report()}


def _phase_text(spec: BenchmarkSpec, cached: bool) -> dict:
    """Cold: encode into an empty cache directory (the first start).  Cached: a later start, i.e.
    in-memory caches dropped and the features read back from ``spec.text_cache_dir``."""
    from .modeling.text import TextFeatureCache

    model = _build(spec)
    times = []
    if cached:
        _text_features(model)  # make sure the disk cache holds the vocabulary
        mem = _Memory(spec.device)
        for _ in range(max(1, spec.repeats)):
            _reset_text_caches(model)
            start = time.perf_counter()
            _text_features(model)
            _sync(spec.device)
            times.append(time.perf_counter() - start)
    else:
        mem = _Memory(spec.device)
        # an empty spec.text_cache_dir is filled (the later phases read it); a used one is left alone
        used = os.path.isdir(spec.text_cache_dir) and any(n.endswith(".pt") for n in os.listdir(spec.text_cache_dir))
        with tempfile.TemporaryDirectory(prefix="partcatseg-bench-cold-") as empty:
            _reset_text_caches(model)
            model.text_cache = TextFeatureCache(empty if used or not spec.text_cache_dir else spec.text_cache_dir)
            start = time.perf_counter()
            _text_features(model)
            _sync(spec.device)
            times.append(time.perf_counter() - start)
    return {"seconds": summarize(times), **mem.report(), **_model_info(model)}


def _phase_inference(spec: BenchmarkSpec) -> dict:
    import torch

    model = _build(spec)
    _text_features(model)
    out: dict[str, Any] = {}
    mem = _Memory(spec.device)
    for bs in sorted({1, max(1, spec.batch_size)}):
        records = _records(model, spec, bs)
        with torch.no_grad():
            first = _timed(lambda: model(records), spec.device, 0, 1)[0]  # includes any compilation
            times = _timed(lambda: model(records), spec.device, max(0, spec.warmup - 1), spec.repeats)
        per_image = [t / bs for t in times]
        out[f"batch_{bs}"] = {
            "first_call_seconds": first,
            "seconds_per_batch": summarize(times),
            "seconds_per_image": summarize(per_image),
            "images_per_second": bs / statistics.median(times),
        }
    out.update(mem.report())
    out.update(_model_info(model))
    return out


def _phase_train_step(spec: BenchmarkSpec) -> dict:
    import torch

    model = _build(spec).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    records = _records(model, spec, max(1, spec.batch_size), train=True)

    def step() -> None:
        losses = model(records)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # text features + optimizer state outside the measurement
    mem = _Memory(spec.device)
    times = _timed(step, spec.device, max(0, spec.warmup - 1), spec.repeats)
    return {"seconds": summarize(times), "batch_size": len(records), **mem.report(), **_model_info(model)}


def _phase_official(spec: BenchmarkSpec) -> dict:
    """Official start-up, then official and our batch-1 inference interleaved on the same image."""
    import torch

    from .benchmark_official import OfficialPartCATSeg

    if not spec.official_root:
        raise ValueError("phase 'official' needs --official-root (a kaist-cvml/part-catseg checkout)")
    model = _build(spec)
    if not _is_part_model(model):
        raise ValueError("the official procedure is PartCATSeg's; use a configs/zero_shot/partcatseg_*.yaml config")
    _text_features(model)
    mem = _Memory(spec.device)
    start = time.perf_counter()
    official = OfficialPartCATSeg(model, spec.official_root)
    startup = time.perf_counter() - start
    startup_mem = mem.report()
    records = _records(model, spec, 1)
    with torch.no_grad():
        mem = _Memory(spec.device)
        ours_out = model(records)[0]
        ours_mem = mem.report()
        del ours_out
        mem = _Memory(spec.device)
        official(records)
        official_mem = mem.report()
        for _ in range(spec.warmup):
            official(records)
            model(records)
        times: dict[str, list[float]] = {"official": [], "ours": []}
        for _ in range(spec.repeats):  # interleaved: both see the same machine load
            for key, fn in (("official", official), ("ours", model)):
                _sync(spec.device)
                t0 = time.perf_counter()
                fn(records)
                _sync(spec.device)
                times[key].append(time.perf_counter() - t0)
        theirs, ours = official(records)[0], model(records)[0]
    parity = {key: float((theirs[key].float() - ours[key].float()).abs().max()) for key in ("sem_seg", "sem_seg_all")}
    result = {"startup": {"seconds": summarize([startup]), "breakdown_seconds": dict(official.startup_seconds),
                          **startup_mem}}
    result["official_notes"] = list(official.notes)  # where this re-enactment departs from the official run
    for key, mem_report in (("official", official_mem), ("ours", ours_mem)):
        result[key] = {"batch_1": {"seconds_per_image": summarize(times[key]),
                                   "images_per_second": 1 / statistics.median(times[key])}, **mem_report}
    result["speedup_median"] = statistics.median(times["official"]) / statistics.median(times["ours"])
    result["official_parity"] = parity
    result.update(_model_info(model))
    return result


def _phase_accuracy(spec: BenchmarkSpec) -> dict:
    """Speed modes against the default path, on the fixture or a synthetic record."""
    from .benchmark_accuracy import DEFAULT_ACCURACY_MODES, mode_deltas

    modes = list(spec.accuracy_modes) or list(DEFAULT_ACCURACY_MODES)
    if spec.fixture:
        from .fixtures import fixture_record, load_fixture, load_rule_weights

        fx = load_fixture(spec.fixture)
        spec = copy.deepcopy(spec)
        spec.opts = list(fx["opts"]) + list(spec.opts)
        model = load_rule_weights(_build(spec), fx).eval()
        records = [fixture_record(fx)]
        source = {"fixture": spec.fixture, "image_size": [fx["height"], fx["width"]]}
    else:
        model = _build(spec)
        records = _records(model, spec, 1)
        source = {"weights": spec.weights or f"random (seed {spec.seed})", "image_size": list(spec.image_size)}
    result = {"source": source, "modes": mode_deltas(model, records, modes)}
    result.update(_model_info(model))
    return result


def run_phase(spec: BenchmarkSpec, name: str) -> dict:
    """Run one phase in this process and return its measurements."""
    import torch

    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {spec.device} requested but CUDA is not available")
    if name == "build":
        return _phase_build(spec)
    if name in ("text_cold", "text_cached"):
        return _phase_text(spec, cached=name == "text_cached")
    if name == "inference":
        return _phase_inference(spec)
    if name == "train_step":
        return _phase_train_step(spec)
    if name == "official":
        return _phase_official(spec)
    if name == "accuracy":
        return _phase_accuracy(spec)
    raise ValueError(f"unknown phase {name!r}; expected one of {list(PHASES + OFFICIAL_PHASES + EXTRA_PHASES)}")


def _run_isolated(spec: BenchmarkSpec, name: str) -> dict:
    cmd = [sys.executable, "-m", "partcatseg.benchmark", "--child-phase", name, "--child-spec", json.dumps(asdict(spec))]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark phase {name!r} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_benchmark(spec: BenchmarkSpec, phases: Sequence[str] = PHASES, isolate: bool = True,
                  log: Optional[Callable[[str], None]] = None) -> dict:
    """Run ``phases`` and return the report (see :data:`SCHEMA` and :func:`format_table`)."""
    import torch

    spec = copy.deepcopy(spec)
    if spec.random_text and {"text_cold", "text_cached"} & set(phases):
        raise ValueError("--random-text replaces text encoding: drop text_cold/text_cached from --phases")
    tmp = None
    if not spec.text_cache_dir:
        tmp = tempfile.TemporaryDirectory(prefix="partcatseg-bench-text-")
        spec.text_cache_dir = tmp.name
    try:
        cfg = _cfg(spec)
        report: dict[str, Any] = {
            "schema": SCHEMA,
            "config_file": spec.config_file,
            "opts": list(spec.opts),
            "device": spec.device,
            "batch_size": spec.batch_size,
            "image_size": list(spec.image_size),
            "warmup": spec.warmup,
            "repeats": spec.repeats,
            "isolated_phases": isolate,
            "settings": {"class_chunk": cfg.TEST.CLASS_CHUNK, "amp": cfg.TEST.AMP,
                         "channels_last": cfg.MODEL.CHANNELS_LAST, "compile": cfg.MODEL.COMPILE},
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "threads": torch.get_num_threads(), "cpu": _cpu_name(), "machine": platform.machine()},
            "phases": {},
        }
        for name in phases:
            if log:
                log(f"[benchmark] {name} ...")
            result = _run_isolated(spec, name) if isolate else run_phase(spec, name)
            if "vocabulary" in result:
                report["vocabulary"] = result.pop("vocabulary")
                report["settings"]["class_chunk_effective"] = result.pop("class_chunk_effective")
            report["phases"][name] = result
        return report
    finally:
        if tmp is not None:
            tmp.cleanup()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------------------------- output
def _fmt_stats(stats: dict, scale: float = 1.0, unit: str = "s") -> str:
    return (f"{stats['median'] * scale:.3f} {unit} (IQR {stats['q1'] * scale:.3f}-{stats['q3'] * scale:.3f}, "
            f"min {stats['min'] * scale:.3f}, n={stats['n']})")


def format_table(report: dict) -> str:
    """A plain-text table of the report's phases."""
    rows = []

    def mem_of(res: dict) -> str:
        text = f"{res['peak_rss_mb']:.0f} (+{res['peak_increase_mb']:.0f})" if "peak_rss_mb" in res else ""
        if "cuda_max_allocated_mb" in res:
            text += f" / {res['cuda_max_allocated_mb']:.0f} CUDA"
        return text

    def batches(label: str, res: dict) -> None:
        for key in sorted((k for k in res if k.startswith("batch_")), key=lambda k: int(k.split("_")[1])):
            b = res[key]
            rows.append((f"{label} {key.replace('_', ' ')}", _fmt_stats(b["seconds_per_image"]) + " / image",
                         f"{b['images_per_second']:.3f} img/s", mem_of(res)))

    for name, res in report["phases"].items():
        if name == "inference":
            batches("inference", res)
        elif name == "official":
            parts = res["startup"].get("breakdown_seconds", {})
            rows.append(("official start-up", _fmt_stats(res["startup"]["seconds"]),
                         ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()), mem_of(res["startup"])))
            batches("official inference", res["official"])
            batches("ours (interleaved)", res["ours"])
            p = res["official_parity"]
            rows.append(("official / ours", f"{res['speedup_median']:.2f}x per image; max |diff| sem_seg "
                         f"{p['sem_seg']:.1e}, sem_seg_all {p['sem_seg_all']:.1e}", "", ""))
        elif name == "accuracy":
            for mode, d in res["modes"].items():
                if mode == "reference":
                    continue
                rows.append((f"accuracy {mode}", f"max |diff| {d['max_abs_diff']:.1e}, mean {d['mean_abs_diff']:.1e}",
                             f"argmax agree {d['argmax_agreement']:.4f}", ""))
        else:
            rows.append((name, _fmt_stats(res["seconds"]), "", mem_of(res)))
    head = ("phase", "time (median, IQR, min)", "throughput", "peak RSS MiB (+section)")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(4)]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    env = report["environment"]
    title = (f"{report['config_file']}  device={report['device']}  batch={report['batch_size']}  "
             f"image={report['image_size'][0]}x{report['image_size'][1]}  torch {env['torch']}, "
             f"{env['threads']} threads, {env['cpu']}")
    vocab = report.get("vocabulary", {})
    if vocab:
        title += "\nvocabulary: " + ", ".join(f"{k}={v}" for k, v in vocab.items())
    title += "\nsettings: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items())
    notes = [f"official: {n}" for n in report["phases"].get("official", {}).get("official_notes", [])]
    return "\n".join([title, line(head), line(tuple("-" * w for w in widths))] + [line(r) for r in rows] + notes)


# ----------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark.py",
        description="Speed and memory of a PartCATSeg / CAT-Seg config: build, text features (cold and cached), "
                    "inference latency/throughput at batch 1 and N, training step, peak memory.")
    p.add_argument("--config-file", required=True, help="YAML config (e.g. configs/zero_shot/partcatseg_voc.yaml)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--batch-size", type=int, default=2, help="batch size N for throughput and the train step")
    p.add_argument("--image-size", type=int, nargs=2, default=(384, 512), metavar=("H", "W"),
                   help="synthetic image size (the model squashes to its encoder size; outputs come back at H x W)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--num-classes", type=int, default=0,
                   help="replace the test vocabulary by N synthetic 'object's part' classes (class-scaling studies)")
    p.add_argument("--random-text", action="store_true",
                   help="random unit text features instead of encoding the vocabulary (for --num-classes scaling "
                        "runs: the head's cost does not depend on the values; text_* phases then time nothing real)")
    p.add_argument("--phases", nargs="+", default=list(PHASES), choices=list(PHASES + OFFICIAL_PHASES + EXTRA_PHASES))
    p.add_argument("--official-root", default="",
                   help="kaist-cvml/part-catseg checkout: adds the 'official' phase (official procedure, same weights)")
    p.add_argument("--text-cache-dir", default="", help="text-feature cache (default: a fresh temporary directory)")
    p.add_argument("--no-isolate", action="store_true", help="run all phases in this process (shared peak RSS)")
    p.add_argument("--json", default="", help="also write the report to this JSON file")
    p.add_argument("--weights", default="", help="checkpoint to load (default: seeded random weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fixture", default="",
                   help="accuracy phase: a parity fixture, e.g. tests/data/partcatseg_voc_single_prompt.pt "
                        "(its config options, rule-filled weights and image)")
    p.add_argument("--accuracy-modes", nargs="+", default=[], metavar="MODE",
                   help="accuracy phase modes (default: one_pass bf16 fp16 channels_last; also: compile)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    return p


def _child_main(argv: Sequence[str]) -> int:
    """Entry of an isolated phase: ``--child-phase NAME --child-spec JSON``; prints the result as JSON."""
    p = argparse.ArgumentParser(prog="partcatseg.benchmark (phase)")
    p.add_argument("--child-phase", required=True)
    p.add_argument("--child-spec", required=True)
    args = p.parse_args(argv)
    spec = BenchmarkSpec(**json.loads(args.child_spec))
    spec.image_size = tuple(spec.image_size)
    print(json.dumps(run_phase(spec, args.child_phase)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child-phase":
        return _child_main(argv)
    args = build_parser().parse_args(argv)
    phases = list(args.phases)
    if args.official_root:
        phases += [p for p in OFFICIAL_PHASES if p not in phases]
    spec = BenchmarkSpec(
        config_file=args.config_file, opts=list(args.opts), device=args.device, batch_size=args.batch_size,
        image_size=tuple(args.image_size), warmup=args.warmup, repeats=args.repeats, num_classes=args.num_classes,
        text_cache_dir=args.text_cache_dir, official_root=args.official_root, weights=args.weights, seed=args.seed,
        random_text=args.random_text, fixture=args.fixture, accuracy_modes=list(args.accuracy_modes),
    )
    report = run_benchmark(spec, phases, isolate=not args.no_isolate, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
