"""Speed and memory benchmark of a configured model (``tools/benchmark.py`` is the command line).

Phases (each in its own subprocess by default, so every peak-memory figure is that phase's own):

* ``matmul_peak``    the machine's measured matmul rate per dtype (the ceiling of :mod:`.flops`);
* ``build``          model construction (random weights, no network), repeated;
* ``text_cold``      class-name text features with an empty cache (the first start);
* ``text_cached``    the same from the on-disk cache in a fresh process (every later start);
* ``inference``      per-image latency and throughput at batch 1 and at ``--batch-size``, its executed
  FLOPs and, against ``matmul_peak``, the achieved GFLOP/s and fraction of the peak; one run per
  ``--inference-variants`` entry (``default``, ``bf16``, ``fp16``, ``channels_last``, ``compile``),
  reported as ``inference`` / ``inference:<variant>``;
* ``train_step``     one optimizer step of the real trainer (SOLVER.* optimizer, clipping, AMP,
  accumulation) on micro-batches of ``--batch-size`` training crops, with the same FLOP figures; one
  run per ``--train-variants`` entry (``default``, ``checkpointing``, ``bf16``, ``accumulate4``,
  combined with ``+``), each in its own process and reported as ``train_step`` /
  ``train_step:<variant>``;
* ``official`` (with ``--official-root``): the official start-up and batch-1 inference procedure
  around the official network code (:mod:`partcatseg.benchmark.official`) on the same weights,
  timed interleaved with ours on the same image, plus the largest output difference
  (``official_parity``);
* ``accuracy`` (on request): every speed mode's outputs against the default fp32 path
  (:mod:`partcatseg.benchmark.accuracy`), on ``--fixture``'s image and config options or on a
  synthetic image, with ``--weights`` or seeded random weights.
* ``stages`` (on request): where the batch-1 inference forward spends its time -- wall time, executed
  FLOPs and their rate per stage the model declares (``SegmentationModel.profile_stages``; encoders,
  cost embedding, aggregation layers, decoder, ...; :mod:`partcatseg.benchmark.stages`), one run per
  ``--inference-variants`` entry like ``inference``.

Timings use ``time.perf_counter`` after warm-up runs (CUDA is synchronised); each figure is the
median with quartiles, min and max of the repeats.  Memory is the peak resident set of the measured
section (Linux ``VmHWM``, restarted through ``/proc/self/clear_refs``; else the process's
``ru_maxrss``), the resident set before it, and ``torch.cuda.max_memory_allocated`` on CUDA.
Nothing here asserts a speed: the numbers are reported, not tested.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

from ..runtime import tune_allocator
from .flops import PEAK_DTYPES, add_utilization, count_flops, matmul_peak
from .measure import Memory, summarize, sync, timed
from .report import cpu_name

SCHEMA = "partcatseg-benchmark/1"
PHASES = ("matmul_peak", "build", "text_cold", "text_cached", "inference", "train_step")
#: config options of each training variant (``--train-variants``; ``a+b`` applies both);
#: ``accumulateN`` = N micro-batches of ``--batch-size`` per optimizer step
TRAIN_VARIANT_OPTS = {
    "default": [],
    "fp32": [],
    "checkpointing": ["MODEL.GRADIENT_CHECKPOINTING", "True"],
    "bf16": ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "bf16"],
    "fp16": ["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "fp16"],
}
OFFICIAL_PHASES = ("official",)
EXTRA_PHASES = ("accuracy", "stages")  # run only when asked for (``--phases accuracy stages``)

__all__ = [
    "SCHEMA",
    "PHASES",
    "OFFICIAL_PHASES",
    "EXTRA_PHASES",
    "TRAIN_VARIANT_OPTS",
    "INFERENCE_VARIANT_OPTS",
    "BenchmarkSpec",
    "train_variant_opts",
    "inference_variant_opts",
    "RandomTextFeatures",
    "synthetic_part_vocabulary",
    "run_phase",
    "run_benchmark",
]


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
    train_variants: list[str] = field(default_factory=lambda: ["default"])  # train_step runs, see TRAIN_VARIANT_OPTS
    train_variant: str = "default"  # the variant of one train_step run (set per run by run_benchmark)
    inference_variants: list[str] = field(default_factory=lambda: ["default"])  # see INFERENCE_VARIANT_OPTS
    inference_variant: str = "default"  # the variant of one inference run


#: config options of each inference variant (``--inference-variants``; ``a+b`` applies both)
INFERENCE_VARIANT_OPTS = {
    "default": [],
    "fp32": [],
    "bf16": ["TEST.AMP", "bf16"],
    "fp16": ["TEST.AMP", "fp16"],
    "channels_last": ["MODEL.CHANNELS_LAST", "True"],
    "compile": ["MODEL.COMPILE", "True"],
}


def inference_variant_opts(variant: str) -> list[str]:
    """Config options of an ``--inference-variants`` entry such as ``bf16`` or ``bf16+channels_last``."""
    opts: list[str] = []
    for part in variant.split("+"):
        if part not in INFERENCE_VARIANT_OPTS:
            raise ValueError(f"--inference-variants: unknown variant part {part!r} in {variant!r}; expected "
                             f"{sorted(INFERENCE_VARIANT_OPTS)}, joined with '+'")
        opts += INFERENCE_VARIANT_OPTS[part]
    return opts


def train_variant_opts(variant: str, micro_batch: int) -> list[str]:
    """Config options of a ``--train-variants`` entry such as ``checkpointing+bf16`` or ``accumulate4``.

    Every variant sets the batch explicitly: ``micro_batch`` images per forward/backward, times the
    accumulation steps per optimizer step.
    """
    opts: list[str] = []
    steps = 1
    for part in variant.split("+"):
        if part.startswith("accumulate") and part[len("accumulate"):].isdigit() and int(part[len("accumulate"):]) > 0:
            steps = int(part[len("accumulate"):])
        elif part in TRAIN_VARIANT_OPTS:
            opts += TRAIN_VARIANT_OPTS[part]
        else:
            raise ValueError(f"--train-variants: unknown variant part {part!r} in {variant!r}; expected "
                             f"{sorted(TRAIN_VARIANT_OPTS)} or accumulateN, joined with '+'")
    return opts + ["SOLVER.IMS_PER_BATCH", str(micro_batch * steps), "SOLVER.MICRO_BATCH_SIZE", str(micro_batch)]


def synthetic_part_vocabulary(num_classes: int):
    """A part vocabulary of ``num_classes`` "object N's part M" classes (6 parts per object).

    Part names rotate through a pool of about num_classes/3 names, so the stage-1 vocabulary grows
    like a real one (Pascal-Part-116: 42 parts, 16 objects).
    """
    from ..vocab import Vocabulary

    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes}: expected a positive number")
    pool = max(6, num_classes // 3)
    names = []
    for i in range(num_classes):
        obj, slot = divmod(i, 6)
        names.append(f"object {obj}'s part {(obj * 3 + slot) % pool}")
    return Vocabulary(names, name=f"synthetic_{num_classes}", parts=True)


class RandomTextFeatures:
    """Stands in for :class:`~partcatseg.modeling.text.TextFeatureCache` in class-scaling runs.

    The head's cost does not depend on the text features' values, and encoding a synthetic
    vocabulary of 800+ classes with 80 templates takes ~10 minutes on a CPU; this returns seeded
    random unit vectors of the right shape instead.  Never used for accuracy figures.
    """

    cache_dir = None

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def clear_memory(self) -> None:
        """Nothing is held (the features are drawn on every call)."""

    def get(self, clip_model, names, templates, synonyms: str = "average"):
        import torch

        g = torch.Generator().manual_seed(self.seed + len(names))
        dim = clip_model.text_projection.shape[1]
        feats = torch.nn.functional.normalize(torch.randn(len(names), len(templates), dim, generator=g), dim=-1)
        return feats.to(clip_model.token_embedding.weight.device)


def _cfg(spec: BenchmarkSpec, extra_opts: Sequence[str] = ()):
    from ..config import setup_cfg

    opts = list(spec.opts) + ["MODEL.DEVICE", spec.device] + list(extra_opts)
    if spec.text_cache_dir:
        opts += ["MODEL.TEXT_CACHE_DIR", spec.text_cache_dir]
    return setup_cfg(spec.config_file, opts)


def _build(spec: BenchmarkSpec, extra_opts: Sequence[str] = ()):
    """The configured model in eval mode: ``spec.weights`` if given, else seeded random weights
    (``MODEL.WEIGHTS`` is a training initialisation and is not read: speed does not depend on it)."""
    import torch

    from ..modeling import build_model

    cfg = _cfg(spec, extra_opts)
    torch.manual_seed(spec.seed)
    model = build_model(cfg)
    if spec.weights:
        from ..checkpoint import Checkpointer

        Checkpointer(model).load_weights(spec.weights)
    if spec.random_text:
        if model.text_cache is None:
            raise ValueError(f"--random-text: {type(model).__name__} has no text_cache to replace")
        model.text_cache = RandomTextFeatures(spec.seed)
    if spec.num_classes:
        vocab = synthetic_part_vocabulary(spec.num_classes)
        if model.task != "part":
            from ..vocab import Vocabulary

            vocab = Vocabulary(vocab.classes, name=vocab.name, parts=False)
        model.set_vocabulary(vocab)
    return model.eval()


def _records(model, spec: BenchmarkSpec, n: int, train: bool = False,
             size: Optional[tuple[int, int]] = None) -> list[dict]:
    """Synthetic records of ``size`` (default ``spec.image_size``) in the protocol's form (labels drawn
    from the vocabularies)."""
    import torch

    g = torch.Generator().manual_seed(spec.seed)
    h, w = size or spec.image_size
    out = []
    for i in range(n):
        rec: dict[str, Any] = {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
                               "height": h, "width": w}
        if train:
            vocab = model.train_vocabulary
            if model.task == "part":
                rec["sem_seg"] = torch.randint(0, len(vocab.objects), (h, w), generator=g)
                rec["obj_part_sem_seg"] = torch.randint(0, len(vocab), (h, w), generator=g)
            else:
                rec["sem_seg"] = torch.randint(0, len(vocab), (h, w), generator=g)
        elif model.task == "part" and model.vocabulary.objects:
            rec["object_class"] = i % len(model.vocabulary.objects)
        out.append(rec)
    return out


def _model_info(model) -> dict[str, Any]:
    """What the model says of itself (vocabulary sizes, class chunk ...), reported with every phase that built one."""
    return {"model": model.describe()}


# ----------------------------------------------------------------------------------------- phases
def _phase_build(spec: BenchmarkSpec) -> dict:
    mem = Memory(spec.device)
    times = []
    for _ in range(max(1, spec.repeats)):
        start = time.perf_counter()
        model = _build(spec)
        sync(spec.device)
        times.append(time.perf_counter() - start)
        del model
    return {"seconds": summarize(times), **mem.report()}


def _phase_text(spec: BenchmarkSpec, cached: bool) -> dict:
    """Cold: encode into an empty cache directory (the first start).  Cached: a later start, i.e.
    in-memory caches dropped and the features read back from ``spec.text_cache_dir``."""
    times = []
    if cached:
        model = _build(spec)
        model.prepare_vocabulary()  # make sure the disk cache holds the vocabulary
        mem = Memory(spec.device)
        for _ in range(max(1, spec.repeats)):
            start = time.perf_counter()
            model.prepare_vocabulary(refresh=True)  # memory forgotten, as in a new process; disk read
            sync(spec.device)
            times.append(time.perf_counter() - start)
        return {"seconds": summarize(times), **mem.report(), **_model_info(model)}
    # an empty spec.text_cache_dir is filled (the later phases read it); a used one is left alone
    used = os.path.isdir(spec.text_cache_dir) and bool(os.listdir(spec.text_cache_dir))
    with tempfile.TemporaryDirectory(prefix="partcatseg-bench-cold-") as empty:
        cache_dir = empty if used or not spec.text_cache_dir else spec.text_cache_dir
        model = _build(spec, ["MODEL.TEXT_CACHE_DIR", cache_dir])
        mem = Memory(spec.device)
        start = time.perf_counter()
        model.prepare_vocabulary()
        sync(spec.device)
        times.append(time.perf_counter() - start)
    return {"seconds": summarize(times), **mem.report(), **_model_info(model)}


def _phase_matmul_peak(spec: BenchmarkSpec) -> dict:
    import torch

    kind = "cuda" if spec.device.startswith("cuda") else "cpu"
    peaks = {dtype: matmul_peak(spec.device, dtype, repeats=max(3, spec.repeats)) for dtype in PEAK_DTYPES[kind]}
    return {"peaks": peaks, "threads": torch.get_num_threads()}


def _inference_model(spec: BenchmarkSpec) -> tuple[BenchmarkSpec, Any]:
    """The spec with its inference variant's options applied, and its model with the text features ready."""
    spec = copy.deepcopy(spec)
    spec.opts = list(spec.opts) + inference_variant_opts(spec.inference_variant)
    model = _build(spec)
    model.prepare_vocabulary()
    return spec, model


def _phase_inference(spec: BenchmarkSpec) -> dict:
    import torch

    spec, model = _inference_model(spec)
    out: dict[str, Any] = {}
    with torch.no_grad():  # executed FLOPs of one image (batch 1), counted outside the timed runs
        out["gflop_per_image"] = count_flops(lambda: model(_records(model, spec, 1))) / 1e9
    out["compute_dtype"] = _cfg(spec).TEST.AMP or "fp32"
    mem = Memory(spec.device)
    for bs in sorted({1, max(1, spec.batch_size)}):
        records = _records(model, spec, bs)
        with torch.no_grad():
            first = timed(lambda: model(records), spec.device, 0, 1)[0]  # includes any compilation
            times = timed(lambda: model(records), spec.device, max(0, spec.warmup - 1), spec.repeats)
        per_image = [t / bs for t in times]
        out[f"batch_{bs}"] = {
            "first_call_seconds": first,
            "seconds_per_batch": summarize(times),
            "seconds_per_image": summarize(per_image),
            "images_per_second": bs / statistics.median(times),
        }
    out.update(mem.report())
    out["variant"] = spec.inference_variant
    out.update(_model_info(model))
    return out


def _phase_stages(spec: BenchmarkSpec) -> dict:
    import torch

    from .stages import profile_stages

    spec, model = _inference_model(spec)
    records = _records(model, spec, 1)
    with torch.no_grad():
        model(records)  # the first call (compilation, caches) is not part of the profile
        prof = profile_stages(model, lambda: model(records), spec.device, max(0, spec.warmup - 1), spec.repeats)
    out: dict[str, Any] = {
        "seconds": summarize(prof["seconds"]),
        "gflop_per_image": sum(s["gflop"] for s in prof["stages"].values()),
        "compute_dtype": _cfg(spec).TEST.AMP or "fp32",
        "stages": {name: {"seconds": summarize(s["seconds"]), "gflop": s["gflop"]} for name, s in prof["stages"].items()},
        "variant": spec.inference_variant,
    }
    out.update(_model_info(model))
    return out


def _step_meter(device: str, warmup: int) -> Any:
    """The train-step phase's trainer hook: warm-up steps, one FLOP-counted step, then timed steps with
    their own peak memory.

    The class is a real ``engine.HookBase`` (no-op callbacks, empty state, ``trainer``) defined here, on
    first use, because importing the engine at module level would import torch with ``partcatseg.benchmark``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from ..engine.hooks import HookBase
    from .flops import _extra_formulas

    class _StepMeter(HookBase):
        # trainers key hook state by qualified name: keep the one a module-level class would have
        __qualname__ = "_StepMeter"

        def __init__(self, device: str, warmup: int) -> None:
            self.device, self.warmup = device, max(1, warmup)  # the first step computes text features: never timed
            self.flop_step = self.warmup
            self.times: list[float] = []
            self.flops = 0.0
            self.memory: Optional[Memory] = None
            self._counter: Any = None
            self._start = 0.0

        def before_step(self) -> None:
            it = self.trainer.iter
            if it == self.flop_step:
                self._counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
                self._counter.__enter__()
            elif it == self.flop_step + 1:
                self.memory = Memory(self.device)
            sync(self.device)
            self._start = time.perf_counter()

        def after_step(self) -> None:
            sync(self.device)
            seconds = time.perf_counter() - self._start
            if self.trainer.iter == self.flop_step:
                self._counter.__exit__(None, None, None)
                self.flops = float(self._counter.get_total_flops())
            elif self.trainer.iter > self.flop_step:
                self.times.append(seconds)

    return _StepMeter(device, warmup)


def _phase_train_step(spec: BenchmarkSpec) -> dict:
    """The trainer's own optimizer step (``SimpleTrainer`` / ``AMPTrainer`` from ``SOLVER.*``) on synthetic
    training crops; the variant's options (checkpointing, AMP, accumulation) come through the config."""
    import itertools

    from ..config import resolve_micro_batches
    from ..engine.optim import build_gradient_clipper, build_optimizer
    from ..engine.train_loop import AMPTrainer, SimpleTrainer

    micro = max(1, spec.batch_size)
    spec = copy.deepcopy(spec)
    spec.opts = list(spec.opts) + train_variant_opts(spec.train_variant, micro)
    cfg = _cfg(spec)
    model = _build(spec).train()
    micro, steps = resolve_micro_batches(cfg, 1)
    crop = tuple(cfg.INPUT.CROP.SIZE) if cfg.INPUT.CROP.ENABLED else tuple(spec.image_size)
    records = _records(model, spec, micro, train=True, size=crop)
    meter = _step_meter(spec.device, spec.warmup)
    kwargs: dict[str, Any] = dict(max_iter=meter.flop_step + 1 + max(1, spec.repeats),
                                  grad_clipper=build_gradient_clipper(cfg), accumulation_steps=steps)
    optimizer = build_optimizer(cfg, model)
    if cfg.SOLVER.AMP.ENABLED:
        trainer: SimpleTrainer = AMPTrainer(model, itertools.repeat(records), optimizer,
                                            amp_dtype=cfg.SOLVER.AMP.DTYPE, **kwargs)
    else:
        trainer = SimpleTrainer(model, itertools.repeat(records), optimizer, **kwargs)
    trainer.register_hooks([meter])
    trainer.train()
    return {"seconds": summarize(meter.times), "variant": spec.train_variant, "batch_size": micro * steps,
            "micro_batch_size": micro, "accumulation_steps": steps, "image_size": list(crop),
            "gflop_per_step": meter.flops / 1e9,
            "compute_dtype": cfg.SOLVER.AMP.DTYPE if cfg.SOLVER.AMP.ENABLED else "fp32",
            "gradient_checkpointing": bool(cfg.MODEL.get("GRADIENT_CHECKPOINTING", False)),
            **(meter.memory.report() if meter.memory else {}), **_model_info(model)}


def _phase_official(spec: BenchmarkSpec) -> dict:
    """Official start-up, then official and our batch-1 inference interleaved on the same image."""
    import torch

    from ..modeling.partcatseg import PartCATSeg
    from .official import OfficialPartCATSeg

    if not spec.official_root:
        raise ValueError("phase 'official' needs --official-root (a kaist-cvml/part-catseg checkout)")
    model = _build(spec)
    if not isinstance(model, PartCATSeg):  # the official code re-enacted here is PartCATSeg's
        raise ValueError("the official procedure is PartCATSeg's; use a configs/zero_shot/partcatseg_*.yaml config")
    model.prepare_vocabulary()
    mem = Memory(spec.device)
    start = time.perf_counter()
    official = OfficialPartCATSeg(model, spec.official_root)
    startup = time.perf_counter() - start
    startup_mem = mem.report()
    records = _records(model, spec, 1)
    with torch.no_grad():
        mem = Memory(spec.device)
        ours_out = model(records)[0]
        ours_mem = mem.report()
        del ours_out
        mem = Memory(spec.device)
        official(records)
        official_mem = mem.report()
        for _ in range(spec.warmup):
            official(records)
            model(records)
        times: dict[str, list[float]] = {"official": [], "ours": []}
        for _ in range(spec.repeats):  # interleaved: both see the same machine load
            for key, fn in (("official", official), ("ours", model)):
                sync(spec.device)
                t0 = time.perf_counter()
                fn(records)
                sync(spec.device)
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
    """Speed modes against the default path, on a fixture's image or a synthetic record.

    Each mode is a model built with that mode's config keys and the reference model's weights.
    """
    from .accuracy import DEFAULT_ACCURACY_MODES, mode_deltas

    modes = list(spec.accuracy_modes) or list(DEFAULT_ACCURACY_MODES)
    spec = copy.deepcopy(spec)
    fixture = None
    if spec.fixture:
        from .accuracy import load_fixture

        fixture = load_fixture(spec.fixture)
        spec.opts = list(fixture["opts"]) + list(spec.opts)
    model = _build(spec)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def build(extra_opts: Sequence[str]):
        other = _build(spec, extra_opts)
        other.load_state_dict(state)
        return other

    if fixture is not None:
        records = [{"image": fixture["image"], "height": fixture["height"], "width": fixture["width"],
                    "object_class": fixture["gt_object_class"]}]
        source = {"fixture": spec.fixture, "weights": spec.weights or f"random (seed {spec.seed})",
                  "image_size": [fixture["height"], fixture["width"]]}
    else:
        records = _records(model, spec, 1)
        source = {"weights": spec.weights or f"random (seed {spec.seed})", "image_size": list(spec.image_size)}
    result = {"source": source, "modes": mode_deltas(model, build, records, modes)}
    result.update(_model_info(model))
    return result


def run_phase(spec: BenchmarkSpec, name: str) -> dict:
    """Run one phase in this process and return its measurements (and the allocator policy it ran under)."""
    # as train_net.py runs: glibc's policy for a checkpointed training step (memory first), else tuned
    memory_first = name == "train_step" and "checkpointing" in spec.train_variant.split("+")
    allocator = tune_allocator(prefer_memory=memory_first)
    result = _run_phase(spec, name)
    result["allocator"] = allocator
    return result


def _run_phase(spec: BenchmarkSpec, name: str) -> dict:
    import torch

    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {spec.device} requested but CUDA is not available")
    if name == "matmul_peak":
        return _phase_matmul_peak(spec)
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
    if name == "stages":
        return _phase_stages(spec)
    raise ValueError(f"unknown phase {name!r}; expected one of {list(PHASES + OFFICIAL_PHASES + EXTRA_PHASES)}")


def _run_isolated(spec: BenchmarkSpec, name: str) -> dict:
    cmd = [sys.executable, "-m", "partcatseg.cli.benchmark", "--child-phase", name,
           "--child-spec", json.dumps(asdict(spec))]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
        # user errors (device, unregistered model, a missing or truncated weights file) before any phase starts
        from ..engine.preflight import check_device, check_weights
        from ..modeling import meta_architecture_class

        check_device(cfg)
        meta_architecture_class(cfg)
        if spec.weights:
            check_weights(spec.weights)
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
                            "threads": torch.get_num_threads(), "cpu": cpu_name(), "machine": platform.machine(),
                            "allocator": tune_allocator()},
            "phases": {},
            "notes": [],
        }
        runs: list[tuple[str, BenchmarkSpec]] = []
        for name in phases:  # inference and train_step: one run per variant, in the order given
            variants = {"inference": spec.inference_variants, "stages": spec.inference_variants,
                        "train_step": spec.train_variants}.get(name)
            if variants is None:
                runs.append((name, spec))
                continue
            for variant in variants:
                if name == "stages" and "compile" in variant.split("+"):
                    inference_variant_opts(variant)
                    report["notes"].append(f"stages:{variant}: not profiled (stage boundaries would split the "
                                           "compiled graphs; the inference phase times this mode)")
                    continue
                one = copy.deepcopy(spec)
                if name in ("inference", "stages"):
                    inference_variant_opts(variant)  # an unknown variant fails before anything runs
                    one.inference_variant = variant
                else:
                    train_variant_opts(variant, 1)
                    one.train_variant = variant
                runs.append((name if variant == "default" else f"{name}:{variant}", one))
        for key, run_spec in runs:
            name = key.split(":")[0]
            if log:
                log(f"[benchmark] {key} ...")
            result = _run_isolated(run_spec, name) if isolate else run_phase(run_spec, name)
            if "model" in result:
                report["model"] = result.pop("model")
            report["phases"][key] = result
        add_utilization(report)
        return report
    finally:
        if tmp is not None:
            tmp.cleanup()


