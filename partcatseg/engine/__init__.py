"""Training and evaluation engine (detectron2's engine without detectron2).

* :mod:`comm` — rank/world-size helpers and collectives (single-process safe);
* :mod:`launch` — one process per GPU (or gloo CPU processes), or join a torchrun job;
* :mod:`optim`, :mod:`lr_scheduler` — the official optimizer rules, gradient clipping, lr schedules;
* :mod:`train_loop` (``TrainerBase``, ``SimpleTrainer``, ``AMPTrainer``), :mod:`hooks`, :mod:`events` —
  the loop, its hooks, metrics and writers;
* :mod:`defaults` — command-line parser and per-process setup; :mod:`inference` — evaluation loop.
"""
from . import comm
from .ddp import create_ddp_model, unwrap_model
from .defaults import collect_env_info, default_argument_parser, default_setup
from .events import (
    CommonMetricPrinter,
    EventStorage,
    EventWriter,
    JSONWriter,
    TensorboardWriter,
    get_event_storage,
)
from .hooks import EvalHook, HookBase, LRScheduler, PeriodicCheckpointer, PeriodicWriter, ProgressWatchdog
from .inference import inference_context, inference_on_dataset
from .launch import STALL_EXIT_CODE, WorkerStalledError, launch
from .logger import setup_logger
from .lr_scheduler import LRMultiplier, PolyParamScheduler, WarmupParamScheduler, build_lr_scheduler
from .optim import GradientClipper, build_gradient_clipper, build_optimizer, get_param_groups, uses_clip_multiplier
from .rng import capture_rng_state, restore_rng_state, seed_all_rng, set_deterministic
from .signals import StopSignals, ignore_stop_signals
from .train_loop import (
    AMPTrainer,
    SimpleTrainer,
    TooManyBadRecordsError,
    Trainer,
    TrainerBase,
    default_hooks,
    default_writers,
)

__all__ = [
    "AMPTrainer",
    "CommonMetricPrinter",
    "EvalHook",
    "EventStorage",
    "EventWriter",
    "GradientClipper",
    "HookBase",
    "JSONWriter",
    "LRMultiplier",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "PolyParamScheduler",
    "ProgressWatchdog",
    "STALL_EXIT_CODE",
    "SimpleTrainer",
    "StopSignals",
    "TensorboardWriter",
    "TooManyBadRecordsError",
    "Trainer",
    "TrainerBase",
    "WarmupParamScheduler",
    "WorkerStalledError",
    "build_gradient_clipper",
    "build_lr_scheduler",
    "build_optimizer",
    "capture_rng_state",
    "collect_env_info",
    "comm",
    "create_ddp_model",
    "default_argument_parser",
    "default_hooks",
    "default_setup",
    "default_writers",
    "get_event_storage",
    "get_param_groups",
    "ignore_stop_signals",
    "inference_context",
    "inference_on_dataset",
    "launch",
    "restore_rng_state",
    "seed_all_rng",
    "set_deterministic",
    "setup_logger",
    "unwrap_model",
    "uses_clip_multiplier",
]
