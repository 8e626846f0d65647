"""The training loop, split as detectron2 splits it.

* :class:`TrainerBase` – the iteration loop, hooks, stop signals and the exact-resume state;
* :class:`SimpleTrainer` – one fp32 step (below); ``from_config`` builds the whole trainer from a config;
* :class:`AMPTrainer` – the same step under ``torch.autocast`` (bf16, or fp16 with a GradScaler on CUDA).

One iteration (:meth:`SimpleTrainer.run_step`) is one optimizer step::

    for each of the K micro-batches:          # K = accumulation_steps (SOLVER.MICRO_BATCH_SIZE), usually 1
        batch = next(data)                    # "data_time" (summed over micro-batches)
        loss_dict = model(batch)              # (AMPTrainer: under torch.autocast)
        total = sum(v for k, v in loss_dict.items() if k.startswith("loss"))
        (total / K).backward()                # gradients add up; DDP exchanges them after the last one only
                                              # (AMPTrainer with fp16 on CUDA: scaled)
    grad_norm = clip(gradients)               # SOLVER.CLIP_GRADIENTS
    metrics exchanged across ranks; NaN/inf loss or gradient -> FloatingPointError (no step)
    optimizer.step()
    weights checked: NaN/inf (or |w| > SOLVER.MAX_WEIGHT_ABS) -> FloatingPointError (nothing saved)
    hooks: lr scheduler step, checkpoint, evaluation, writers

Every entry of the loss dict is logged: keys starting with ``loss`` are summed and optimised, the
others (``term_*`` diagnostics, accuracies) are logged as they are (means over the micro-batches).

Gradient accumulation: with ``K`` micro-batches per step, each process's gradient is the mean of its
micro-batches' gradients, and DDP averages those over processes, so a step on ``W`` processes with
``K`` micro-batches of ``b`` images equals a step on ``W * K`` processes with ``b`` images each (the
loader hands out the images those processes would take). The iteration counter, the LR schedule,
checkpoints, logging and resume all count optimizer steps.

Because the finiteness check happens before ``optimizer.step()`` and on every rank at once, a
NaN loss or gradient never reaches the weights. A step can still overflow the weights (a huge
learning rate, an optimizer state gone wrong): after every optimizer step one fused reduction
(``torch._foreach_norm(params, inf)``: the largest |value| of every trainable tensor) checks that
they are finite and at most ``SOLVER.MAX_WEIGHT_ABS``; the ranks agree on the verdict with one
scalar all-reduce, and a failure raises ``FloatingPointError`` naming the iteration and the first
bad parameter before any hook runs. :meth:`TrainerBase.save_checkpoint` checks again before
writing, so a checkpoint never holds such weights and the last good one stays ``last_checkpoint``.

Bad training records: a loader built with ``skip_bad_records`` (``DATALOADER.SKIP_BAD_RECORDS``)
replaces an unreadable record by a deterministic draw and reports it; the trainer exchanges the
reports in the per-step metric exchange, logs one line per record, keeps them in the checkpoint
and in ``OUTPUT_DIR/skipped_train_records.json``, and stops every rank at the same iteration when
more distinct records than the loader's ``max_bad_records`` were skipped.

Progress: the trainer records which phase of which iteration it is in (:attr:`TrainerBase.progress`);
:class:`~partcatseg.engine.hooks.ProgressWatchdog` (``SOLVER.WATCHDOG_SECONDS``) reads it to stop a
job in which a rank stopped making progress.

Exact resume: a checkpoint holds the model, optimizer, scheduler (LRScheduler hook), GradScaler,
the iteration, and per rank the python/numpy/torch RNG states and the data-loader position.
``resume_or_load(resume=True)`` restores all of it, so on CPU with deterministic ops "N iterations"
equals "N/2, stop, resume, N/2" bit for bit. The data position is restored for loaders that
implement ``state_dict()``/``load_state_dict()`` (state after the batches handed out so far;
``load_state_dict`` is called before the next ``iter()``). A loader without them may instead be
built, after :meth:`Trainer.resume_or_load`, to start at ``trainer.start_iter`` and expose that as
``loader.start_iter``. Otherwise the data order restarts, which is logged.

SIGINT/SIGTERM while training: the current iteration finishes, a checkpoint ``model_{iter:07d}``
is written (``last_checkpoint`` updated), :attr:`Trainer.interrupted` is set and ``train()``
returns. In DDP all ranks agree on the stopping iteration through the per-step metric exchange
(a request that arrives after this iteration's exchange takes effect one iteration later).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
import weakref
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import nn

from . import comm
from .ddp import create_ddp_model, unwrap_model
from .events import CommonMetricPrinter, EventStorage, EventWriter, JSONWriter, TensorboardWriter
from .hooks import (EvalHook, HookBase, LRScheduler, PeriodicCheckpointer, PeriodicWriter, ProgressState,
                    ProgressWatchdog)
from .optim import GradientClipper, build_gradient_clipper, build_lr_scheduler, build_optimizer
from ..config import resolve_micro_batches
from ..modeling.speed import amp_dtype as amp_dtype_of
from .rng import capture_rng_state, restore_rng_state
from .signals import StopSignals

__all__ = ["TrainerBase", "SimpleTrainer", "AMPTrainer", "Trainer", "TooManyBadRecordsError", "default_hooks",
           "default_writers"]

SKIPPED_TRAIN_RECORDS_FILE = "skipped_train_records.json"


class TooManyBadRecordsError(RuntimeError):
    """More distinct training records were unreadable than ``DATALOADER.MAX_BAD_RECORDS`` allows."""

logger = logging.getLogger(__name__)


def _to_float(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"expected a scalar, got a tensor of shape {tuple(v.shape)}")
        return float(v.detach().float().cpu().item())
    return float(v)


def default_writers(output_dir: str, max_iter: int) -> List[EventWriter]:
    """Console progress line, ``OUTPUT_DIR/metrics.json`` and TensorBoard events in ``OUTPUT_DIR``."""
    return [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardWriter(output_dir),
    ]


def default_hooks(cfg: Any, trainer: "TrainerBase", test_function: Optional[Any] = None,
                  writer_period: int = 20) -> List[HookBase]:
    """detectron2's DefaultTrainer hooks, in its order (see :mod:`partcatseg.engine.hooks`), after the
    progress watchdog (``SOLVER.WATCHDOG_SECONDS`` > 0; heartbeats in ``OUTPUT_DIR/heartbeats``)."""
    hooks: List[HookBase] = []
    watchdog = float(cfg.SOLVER.WATCHDOG_SECONDS)
    if watchdog < 0:
        raise ValueError(f"SOLVER.WATCHDOG_SECONDS must be >= 0 (0 = off), got {watchdog}")
    if watchdog > 0:
        heartbeats = os.path.join(cfg.OUTPUT_DIR, "heartbeats") if cfg.OUTPUT_DIR else None
        hooks.append(ProgressWatchdog(watchdog, heartbeats))
    hooks.append(LRScheduler())
    if trainer.checkpointer is not None:
        hooks.append(PeriodicCheckpointer(trainer.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
    if test_function is not None:
        hooks.append(EvalHook(cfg.TEST.EVAL_PERIOD, test_function))
    if comm.is_main_process():
        writers = default_writers(cfg.OUTPUT_DIR, trainer.max_iter)
        console = [w for w in writers if isinstance(w, CommonMetricPrinter)]
        # the console line from the first iterations on (time and ETA early); files keep the period
        hooks.append(PeriodicWriter(console, period=writer_period, first_iters=(0, 4, 9)))
        hooks.append(PeriodicWriter([w for w in writers if w not in console], period=writer_period))
    return hooks


class TrainerBase:
    """Iteration loop with hooks, stop signals and exact resume; sub-classes define :meth:`run_step`.

    Args:
        model: returns a dict of losses in training mode (keys starting with "loss" are summed;
            every other entry is logged as it is).
        data_loader: iterable of batches, usually infinite (see the module docstring for resume);
            may be ``None`` until :meth:`train` (e.g. to build it after :meth:`resume_or_load`).
        optimizer: e.g. from :func:`build_optimizer`.
        max_iter: total number of iterations.
    """

    def __init__(self, model: nn.Module, data_loader: Optional[Iterable[Any]], optimizer: torch.optim.Optimizer, *,
                 max_iter: int, hooks: Sequence[HookBase] = ()):
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.max_iter = int(max_iter)
        self.cfg: Any = None
        self.checkpointer: Any = None
        self.iter = 0
        self.start_iter = 0
        self.storage: Optional[EventStorage] = None
        self.last_eval_results: Optional[Mapping[str, Any]] = None
        self.interrupted: Optional[str] = None  # name of the signal / reason that stopped training early
        self.last_saved_iter: Optional[int] = None
        self._hooks: List[HookBase] = []
        self._pending_hook_states: Dict[str, Any] = {}
        self._pending_rank_state: Optional[Dict[str, Any]] = None
        self._rank_states: Optional[List[Dict[str, Any]]] = None
        self._loaded_trainer_state = False
        self._batches_consumed = 0
        self._data_iter: Any = None
        #: micro-batches (loader items) per iteration; each iteration is one optimizer step
        self.accumulation_steps = 1
        self._new_skips: List[Dict[str, Any]] = []
        self._stop_requested: Optional[str] = None
        self._agreed_stop: Optional[str] = None
        self._signals: Optional[StopSignals] = None
        #: phase of the current iteration, read by the progress watchdog's thread
        self.progress = ProgressState()
        #: held while a checkpoint file is written (the watchdog waits for it before stopping the job)
        self.save_lock = threading.Lock()
        self._last_checkpoint: Optional[str] = None  # None = not looked up yet; "" = none
        #: weights are checked to be finite and at most this large in |value| (0 = finiteness only)
        self.max_weight_abs = 0.0
        #: training records the loader skipped (this run and, after a resume, the runs before)
        self.skipped_records: List[Dict[str, Any]] = []
        self._skipped_keys: set = set()
        self.register_hooks(hooks)

    # ------------------------------------------------------------------ hooks
    def register_hooks(self, hooks: Iterable[Optional[HookBase]]) -> None:
        """Append hooks (run in registration order); ``None`` entries are skipped."""
        for h in hooks:
            if h is None:
                continue
            h.trainer = weakref.proxy(self)
            name = type(h).__qualname__
            if name in self._pending_hook_states:
                h.load_state_dict(self._pending_hook_states.pop(name))
            self._hooks.append(h)

    def _model_device_type(self) -> str:
        try:
            return next(unwrap_model(self.model).parameters()).device.type
        except StopIteration:
            return "cpu"

    # ------------------------------------------------------------------ checkpoint state
    def _local_rank_state(self) -> Dict[str, Any]:
        loader_state = None
        if callable(getattr(self.data_loader, "state_dict", None)):
            loader_state = self.data_loader.state_dict()
        return {"rng": capture_rng_state(),
                "data": {"batches_consumed": self._batches_consumed, "loader": loader_state}}

    def snapshot_rank_states(self) -> None:
        """Collect every rank's RNG and data state for the next save (collective)."""
        self._rank_states = comm.all_gather(self._local_rank_state())

    def save_checkpoint(self, name: str, checkpointer: Any = None) -> None:
        """Save ``name``.pth now (collective: every rank calls it at the same iteration)."""
        checkpointer = checkpointer or self.checkpointer
        if checkpointer is None:
            raise RuntimeError("Trainer.save_checkpoint: no checkpointer (use from_config or set trainer.checkpointer)")
        self.check_weights(f"before saving {name}.pth (iteration {self.iter})")
        self.snapshot_rank_states()
        try:
            with self.save_lock:
                checkpointer.save(name, iteration=self.iter)
        finally:
            self._rank_states = None
        self.last_saved_iter = self.iter
        if getattr(checkpointer, "save_dir", ""):
            self._last_checkpoint = os.path.join(checkpointer.save_dir, f"{name}.pth")

    def last_checkpoint_file(self) -> str:
        """The newest complete checkpoint of this run's output directory ("" if none); cheap after the first call."""
        if self._last_checkpoint is None:
            path = self._last_checkpoint_path()
            self._last_checkpoint = "" if path == "none" else path
        return self._last_checkpoint

    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"iteration": self.iter, "optimizer": self.optimizer.state_dict()}
        hooks = {type(h).__qualname__: h.state_dict() for h in self._hooks}
        hooks = {k: v for k, v in hooks.items() if v}
        if hooks:
            state["hooks"] = hooks
        state["rank_states"] = self._rank_states if self._rank_states is not None else [self._local_rank_state()]
        if self.skipped_records:
            state["skipped_records"] = [dict(r) for r in self.skipped_records]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.iter = int(state["iteration"])
        self._loaded_trainer_state = True
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        hook_states = dict(state.get("hooks", {}))
        for h in self._hooks:
            name = type(h).__qualname__
            if name in hook_states:
                h.load_state_dict(hook_states.pop(name))
        self._pending_hook_states = hook_states  # for hooks registered later
        self.skipped_records = [dict(r) for r in state.get("skipped_records") or []]
        self._skipped_keys = {self._skip_key(r) for r in self.skipped_records}
        ranks = list(state.get("rank_states") or [])
        world, rank = comm.get_world_size(), comm.get_rank()
        if len(ranks) == world:
            self._pending_rank_state = ranks[rank]
        elif ranks:
            logger.warning("checkpoint was written by %d process(es), this run has %d: data positions are taken "
                           "from rank 0, random streams are not restored (the run will not be bit-identical)",
                           len(ranks), world)
            self._pending_rank_state = {"data": ranks[0].get("data")}
        else:
            self._pending_rank_state = None

    def resume_or_load(self, resume: bool = True, weights: Optional[str] = None) -> None:
        """With ``resume`` and a ``last_checkpoint`` in the output dir: restore everything and continue
        at the next iteration. Otherwise load only model weights from ``weights`` (default
        ``cfg.MODEL.WEIGHTS``; "" = keep the initialisation) and start at iteration 0."""
        if self.checkpointer is None:
            raise RuntimeError("Trainer.resume_or_load: no checkpointer (use from_config or set trainer.checkpointer)")
        if weights is None:
            weights = self.cfg.MODEL.WEIGHTS if self.cfg is not None else ""
        self._loaded_trainer_state = False
        self._last_checkpoint = None
        extra = self.checkpointer.resume_or_load(weights, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            last = self.iter if self._loaded_trainer_state else int(extra.get("iteration", -1))
            self.start_iter = last + 1
            logger.info("resuming at iteration %d from %s", self.start_iter, self.checkpointer.get_checkpoint_file())
        else:
            self.start_iter = 0

    # ------------------------------------------------------------------ control
    def request_stop(self, reason: str = "stop request") -> None:
        """Stop after the current iteration, saving a checkpoint (as on SIGTERM)."""
        self._stop_requested = reason

    def _local_stop_reason(self) -> Optional[str]:
        if self._signals is not None and self._signals.received:
            return self._signals.received
        return self._stop_requested

    def _last_checkpoint_path(self) -> str:
        if self.checkpointer is not None and self.checkpointer.has_checkpoint():
            return self.checkpointer.get_checkpoint_file()
        return "none"

    # ------------------------------------------------------------------ loop
    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        if self.storage is not None:
            self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        self.storage.iter = self.iter
        self._phase("before_step")
        for h in self._hooks:
            h.before_step()

    def after_step(self) -> None:
        self._phase("after_step")
        for h in self._hooks:
            h.after_step()
        self.progress.completed(self.iter)

    def _phase(self, name: str) -> None:
        """Record the phase of the current iteration (for the progress watchdog)."""
        self.progress.enter(name, self.iter)

    def _start_data(self) -> None:
        """Restore the loader position (if any), create the iterator, then restore RNG states.

        RNG comes last so that whatever ``iter(loader)`` draws (e.g. DataLoader worker seeds)
        does not shift the training's random stream relative to the uninterrupted run.
        """
        state, self._pending_rank_state = self._pending_rank_state, None
        data = (state or {}).get("data") or {}
        consumed = int(data.get("batches_consumed", 0)) if state else self._batches_consumed
        loader_state = data.get("loader")
        if self.data_loader is None:
            raise RuntimeError("Trainer.train: no data loader (set trainer.data_loader before training)")
        loader_steps = getattr(self.data_loader, "accumulation_steps", None)
        if loader_steps is not None and loader_steps != self.accumulation_steps:
            raise ValueError(
                f"the training loader hands out {loader_steps} micro-batch(es) per iteration but the trainer "
                f"accumulates {self.accumulation_steps}; build both from the same SOLVER.IMS_PER_BATCH / "
                "SOLVER.MICRO_BATCH_SIZE (train_loader_from_config, Trainer.from_config)")
        start_iter = getattr(self.data_loader, "start_iter", None)
        if loader_state is not None and callable(getattr(self.data_loader, "load_state_dict", None)):
            self.data_loader.load_state_dict(loader_state)
        elif consumed and start_iter is not None and start_iter * self.accumulation_steps == consumed:
            pass  # a loader built to start at the resumed position (e.g. build_train_loader(start_iter=...))
        elif consumed:
            logger.warning("the training data loader (%s) cannot restore its position (no state_dict/"
                           "load_state_dict or none saved): it restarts from its beginning, so the data order "
                           "differs from an uninterrupted run", type(self.data_loader).__name__)
        self._batches_consumed = consumed
        self._data_iter = iter(self.data_loader)
        if state and state.get("rng"):
            restore_rng_state(state["rng"])

    def train(self, start_iter: Optional[int] = None, max_iter: Optional[int] = None) -> Optional[Mapping[str, Any]]:
        """Run iterations ``start_iter .. max_iter-1``; returns the last evaluation results (if any).

        Returns early, with :attr:`interrupted` set, after SIGINT/SIGTERM or :meth:`request_stop`.
        """
        start = self.start_iter if start_iter is None else int(start_iter)
        if max_iter is not None:
            self.max_iter = int(max_iter)
        self.iter = self.start_iter = start
        self.interrupted = self._stop_requested = self._agreed_stop = None
        self.progress.reset(start)
        logger.info("Starting training from iteration %d (max_iter %d)", start, self.max_iter)
        self.model.train()
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self._checked_weights = self._weights_to_check()
        t_start = time.perf_counter()
        with EventStorage(start) as self.storage, StopSignals() as self._signals:
            try:
                self.before_train()
                self._start_data()
                for self.iter in range(start, self.max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    if self.iter < self.max_iter - 1 and self._should_stop():
                        break
                else:
                    self.iter = self.max_iter
            except Exception as exc:
                logger.exception("Exception during training at iteration %d:", self.iter)
                if comm.get_world_size() > 1 and comm.is_timeout_error(exc):
                    # e.g. DDP's gradient all-reduce inside backward(): say what happened in plain words
                    timeout = comm.get_collective_timeout()
                    message = (f"a collective operation on rank {comm.get_rank()} waited longer than the collective "
                               f"timeout ({f'{timeout.total_seconds():g} s' if timeout else 'default'}, --dist-timeout "
                               f"/ DIST_TIMEOUT) at iteration {self.iter}: another rank stopped responding (see its "
                               f"log.txt.rank<N> and OUTPUT_DIR/heartbeats). Last checkpoint: "
                               f"{self._last_checkpoint_path()}.")
                    logger.error(message)
                    # also for comm's own timeout error: the iteration and the last checkpoint are said here
                    raise comm.CollectiveTimeoutError(f"{message} Original error: {exc}") from exc
                raise
            finally:
                try:
                    self._phase("finishing")
                    self.after_train()
                finally:
                    self._signals = None
                    self._data_iter = None
        done = (self.iter if self.interrupted else self.max_iter) - start
        if done > 0:
            total = time.perf_counter() - t_start
            logger.info("Overall training speed: %d iterations in %s (%.4f s / it)", done,
                        time.strftime("%H:%M:%S", time.gmtime(total)), total / done)
        return self.last_eval_results

    def _should_stop(self) -> bool:
        reason = self._agreed_stop if comm.get_world_size() > 1 else self._local_stop_reason()
        if not reason:
            return False
        self.interrupted = reason
        if self.checkpointer is not None and self.last_saved_iter != self.iter:
            self.save_checkpoint(f"model_{self.iter:07d}")
        logger.warning("Training stopped by %s after iteration %d. Last checkpoint: %s. Resume with --resume "
                       "(continues at iteration %d).", reason, self.iter, self._last_checkpoint_path(), self.iter + 1)
        return True

    def _next_batch(self) -> Any:
        try:
            batch = next(self._data_iter)
        except StopIteration:
            raise RuntimeError(
                f"the training data loader is exhausted after {self._batches_consumed} batches (iteration "
                f"{self.iter} of {self.max_iter}); training loaders must be infinite (e.g. a TrainingSampler)"
            ) from None
        self._batches_consumed += 1
        pop = getattr(self.data_loader, "pop_skipped", None)
        if callable(pop):
            for entry in pop():
                entry = dict(entry)
                entry.update(rank=comm.get_rank(), iteration=self.iter)
                self._new_skips.append(entry)
        return batch

    # ------------------------------------------------------------------ bad training records
    @staticmethod
    def _skip_key(entry: Mapping[str, Any]) -> tuple:
        return (entry.get("position"), entry.get("attempt"), entry.get("file_name"))

    def _skipped_records_path(self) -> Optional[str]:
        out = self.cfg.OUTPUT_DIR if self.cfg is not None else getattr(self.checkpointer, "save_dir", "")
        return os.path.join(out, SKIPPED_TRAIN_RECORDS_FILE) if out else None

    def _note_skipped_records(self, everyone: Sequence[Mapping[str, Any]]) -> None:
        """Every rank's skipped records of this iteration: log, keep, write, and stop beyond the maximum.

        All ranks see the same exchanged lists, so they all stop at the same iteration.
        """
        new = [e for m in everyone for e in m.get("skipped", ())]
        if not new:
            return
        added = False
        for entry in new:
            key = self._skip_key(entry)
            logger.warning("Skipped training record %s (rank %s, iteration %s, stream position %s): %s; a replacement "
                           "was drawn", entry.get("file_name"), entry.get("rank"), entry.get("iteration"),
                           entry.get("position"), entry.get("reason"))
            if key not in self._skipped_keys:
                self._skipped_keys.add(key)
                self.skipped_records.append(dict(entry))
                added = True
        path = self._skipped_records_path()
        if added and path and comm.is_main_process():
            tmp = f"{path}.tmp{os.getpid()}"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(self.skipped_records, f, indent=1)
                os.replace(tmp, path)
            except OSError as exc:
                logger.warning("cannot write %s: %s", path, exc)
        limit = getattr(self.data_loader, "max_bad_records", None)
        files = {e.get("file_name") for e in self.skipped_records}
        if limit is not None and limit >= 0 and len(files) > limit:
            raise TooManyBadRecordsError(
                f"{len(files)} distinct training records could not be read, more than DATALOADER.MAX_BAD_RECORDS="
                f"{limit}; stopping at iteration {self.iter} before its optimizer step (the latest: "
                f"{new[-1].get('file_name')}: {new[-1].get('reason')}). They are listed in "
                f"{path or SKIPPED_TRAIN_RECORDS_FILE}; fix or remove them, or raise the maximum. "
                f"Last checkpoint: {self._last_checkpoint_path()}."
            )

    # ------------------------------------------------------------------ weights check
    def _weights_to_check(self) -> List[tuple]:
        """(name, tensor) of the floating-point parameters the optimizer updates, in the model's order."""
        names = {id(p): n for n, p in unwrap_model(self.model).named_parameters()}
        return [(names.get(id(p), f"<optimizer parameter {i}>"), p) for i, p in enumerate(self._params)
                if p.is_floating_point()]

    def check_weights(self, when: str) -> None:
        """Raise ``FloatingPointError`` if a trainable weight is NaN/inf or above ``max_weight_abs`` on some rank.

        Screen: one fused L2 norm per device and dtype (``torch._foreach_norm``; NaN/inf propagate into
        it, and max |w| <= ||w||_2, so a finite norm within the bound clears a tensor). Only tensors
        that fail the screen get their exact largest |value| computed. One host sync, plus one scalar
        all-reduce in DDP for the ranks' agreement.
        """
        named = getattr(self, "_checked_weights", None)
        if named is None:
            self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
            named = self._checked_weights = self._weights_to_check()
        if not named:
            return
        bound = float(self.max_weight_abs or 0.0)
        groups: Dict[tuple, List[int]] = {}
        for i, (_, p) in enumerate(named):
            groups.setdefault((p.device, p.dtype), []).append(i)
        with torch.no_grad():
            screens = []
            for idx in groups.values():
                norm = torch.stack(torch._foreach_norm([named[i][1].detach() for i in idx], 2)).float()
                flag = ~torch.isfinite(norm)
                if bound > 0:
                    flag |= norm > bound
                screens.append((idx, flag))
            anything = torch.stack([f.any().cpu() for _, f in screens]).any() if len(screens) > 1 else \
                screens[0][1].any()
            first = None
            if bool(anything):  # rare: exact check of the suspects only
                for idx, flag in screens:
                    for j in flag.nonzero().flatten().tolist():
                        peak = float(torch.linalg.vector_norm(named[idx[j]][1].detach().float(), float("inf")))
                        if not math.isfinite(peak) or (bound > 0 and peak > bound):
                            if first is None or idx[j] < first[0]:
                                first = (idx[j], peak)
        if not comm.any_rank(first is not None):
            return
        everyone = comm.all_gather(None if first is None else (named[first[0]][0], first[1]))
        ranks = [r for r, f in enumerate(everyone) if f is not None]
        name, value = everyone[ranks[0]]
        kind = "NaN or infinite" if not math.isfinite(value) else f"larger than SOLVER.MAX_WEIGHT_ABS={bound:g}"
        raise FloatingPointError(
            f"weights became {kind} {when} (rank(s) {ranks}): first bad parameter {name!r} (max |value| = "
            f"{value:g}). Nothing was saved; last good checkpoint: {self._last_checkpoint_path()}."
        )

    def run_step(self) -> None:
        """One iteration (sub-classes); it consumes ``accumulation_steps`` batches through :meth:`_next_batch`."""
        raise NotImplementedError(f"{type(self).__name__} does not define run_step")

    def _write_metrics(self, everyone: Sequence[Dict[str, Any]], step_time: float) -> None:
        """Average losses/terms over ranks, take the slowest data time, and store them."""
        n = len(everyone)
        storage = self.storage
        for key in everyone[0]["values"]:
            storage.put_scalar(key, sum(m["values"].get(key, 0.0) for m in everyone) / n)
        for key in everyone[0]["terms"]:
            storage.put_scalar(key, sum(m["terms"].get(key, 0.0) for m in everyone) / n)
        storage.put_scalar("data_time", max(m["data_time"] for m in everyone))
        storage.put_scalar("time", step_time)
        if everyone[0]["grad_norm"] is not None:
            storage.put_scalar("grad_norm", everyone[0]["grad_norm"])


class SimpleTrainer(TrainerBase):
    """fp32 training: forward, backward, gradient clipping, finiteness check, optimizer step.

    Args (beyond :class:`TrainerBase`):
        scheduler: lr scheduler stepped by the :class:`LRScheduler` hook.
        grad_clipper: a :class:`GradientClipper`; ``None`` = no clipping (norm still checked).
        accumulation_steps: micro-batches whose gradients make one optimizer step (module docstring).
    """

    def __init__(self, model: nn.Module, data_loader: Optional[Iterable[Any]], optimizer: torch.optim.Optimizer, *,
                 max_iter: int, scheduler: Any = None, grad_clipper: Optional[GradientClipper] = None,
                 hooks: Sequence[HookBase] = (), accumulation_steps: int = 1):
        super().__init__(model, data_loader, optimizer, max_iter=max_iter, hooks=hooks)
        self.scheduler = scheduler
        self.grad_clipper = grad_clipper or GradientClipper(enabled=False)
        if int(accumulation_steps) < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        self.accumulation_steps = int(accumulation_steps)

    @classmethod
    def from_config(cls, cfg: Any, model: nn.Module, data_loader: Optional[Iterable[Any]], *,
                    test_function: Optional[Any] = None, clip_multiplier: Optional[bool] = None) -> "SimpleTrainer":
        """DefaultTrainer essentials: DDP wrap, optimizer/scheduler/clipper from ``SOLVER.*``, a
        :class:`~partcatseg.checkpoint.Checkpointer` in ``OUTPUT_DIR`` and the default hooks.

        ``SOLVER.AMP.ENABLED`` gives an :class:`AMPTrainer` (``SOLVER.AMP.DTYPE``); ``SOLVER.MICRO_BATCH_SIZE``
        sets the gradient accumulation (the loader must be built from the same keys). ``test_function()``
        (optional) evaluates the model and returns a results dict; it runs every ``TEST.EVAL_PERIOD``
        iterations and at the end.
        """
        from ..checkpoint import Checkpointer

        _, accumulation = resolve_micro_batches(cfg, comm.get_world_size())
        model = create_ddp_model(model)
        optimizer = build_optimizer(cfg, model, clip_multiplier=clip_multiplier)
        kwargs: Dict[str, Any] = dict(max_iter=cfg.SOLVER.MAX_ITER, scheduler=build_lr_scheduler(cfg, optimizer),
                                      grad_clipper=build_gradient_clipper(cfg), accumulation_steps=accumulation)
        if cfg.SOLVER.AMP.ENABLED:
            trainer: SimpleTrainer = AMPTrainer(model, data_loader, optimizer, amp_dtype=cfg.SOLVER.AMP.DTYPE, **kwargs)
        else:
            trainer = cls(model, data_loader, optimizer, **kwargs)
        trainer.cfg = cfg
        trainer.max_weight_abs = float(cfg.SOLVER.MAX_WEIGHT_ABS)
        if trainer.max_weight_abs < 0:
            raise ValueError(f"SOLVER.MAX_WEIGHT_ABS must be >= 0 (0 = check only finiteness), "
                             f"got {trainer.max_weight_abs}")
        trainer.checkpointer = Checkpointer(unwrap_model(model), cfg.OUTPUT_DIR,
                                            save_to_disk=comm.is_main_process(), trainer=weakref.proxy(trainer))
        trainer.register_hooks(default_hooks(cfg, trainer, test_function))
        return trainer

    # -- the three points AMPTrainer changes
    def _autocast(self) -> Any:
        return contextlib.nullcontext()

    def _backward(self, losses: torch.Tensor) -> None:
        losses.backward()

    def _unscale(self) -> None:
        """Gradients to their true scale before clipping (a GradScaler's; nothing to do in fp32)."""

    def _optimizer_step(self) -> None:
        self.optimizer.step()

    def _exchange_context(self, micro: int) -> Any:
        """DDP exchanges gradients in the backward of the last micro-batch only (``no_sync`` before)."""
        if micro < self.accumulation_steps - 1 and callable(getattr(self.model, "no_sync", None)):
            return self.model.no_sync()
        return contextlib.nullcontext()

    @staticmethod
    def _loss_terms(loss_dict: Any) -> tuple:
        """(loss dict, keys of the optimised terms, their sum), checking what the model returned."""
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"loss": loss_dict}
        if not isinstance(loss_dict, Mapping):
            raise TypeError(f"the model returned {type(loss_dict).__name__} in training mode, "
                            "expected a dict of losses")
        loss_keys = [k for k in loss_dict if k.startswith("loss")]
        if not loss_keys:
            raise ValueError(f"the model's loss dict has no key starting with 'loss': {sorted(loss_dict)}")
        return loss_dict, loss_keys, sum(loss_dict[k] for k in loss_keys)

    def _checks_gradients(self) -> bool:
        """Whether a non-finite gradient norm is an error (a GradScaler skips such steps itself)."""
        return True

    def run_step(self) -> None:
        t0 = time.perf_counter()
        steps = self.accumulation_steps
        data_time = 0.0
        values: Dict[str, float] = {}
        terms: Dict[str, float] = {}
        # before the first forward: the previous step's gradients are not kept alive through it
        self.optimizer.zero_grad(set_to_none=True)
        for micro in range(steps):
            self._phase("data")
            t_data = time.perf_counter()
            batch = self._next_batch()
            data_time += time.perf_counter() - t_data

            self._phase("forward")
            with self._exchange_context(micro):
                with self._autocast():
                    loss_dict = self.model(batch)
                loss_dict, loss_keys, losses = self._loss_terms(loss_dict)

                self._phase("backward")
                # the mean over micro-batches (K = 1: the loss itself, bit for bit as without accumulation)
                self._backward(losses / steps if steps > 1 else losses)
            micro_values = {k: _to_float(loss_dict[k]) for k in loss_keys}
            micro_values["total_loss"] = _to_float(losses)
            for key, value in micro_values.items():
                values[key] = values.get(key, 0.0) + value / steps
            for key, value in loss_dict.items():
                if key not in micro_values:
                    terms[key] = terms.get(key, 0.0) + _to_float(value) / steps
            del loss_dict, losses, batch  # free this micro-batch's graph and inputs before the next
        self._unscale()
        grad_norm = self.grad_clipper(self._params)
        gnorm = _to_float(grad_norm) if grad_norm is not None else None
        bad_loss = not all(math.isfinite(v) for v in values.values())
        bad_grad = self._checks_gradients() and gnorm is not None and not math.isfinite(gnorm)
        local = {"values": values, "terms": terms, "data_time": data_time, "grad_norm": gnorm,
                 "bad": bad_loss or bad_grad, "stop": self._local_stop_reason()}
        if self._new_skips:
            local["skipped"], self._new_skips = self._new_skips, []
        self._phase("exchange")
        everyone = comm.all_gather(local)
        self.progress.exchanged(self.iter)
        self._phase("optimizer")

        bad_ranks = [r for r, m in enumerate(everyone) if m["bad"]]
        if bad_ranks:
            what = "loss" if bad_loss else ("gradients" if bad_grad else "loss or gradients on another rank")
            raise FloatingPointError(
                f"{what} became NaN or infinite at iteration {self.iter} (rank(s) {bad_ranks}): "
                f"loss_dict = {values}, grad_norm = {gnorm}. The optimizer step was skipped, so the weights are "
                f"those after iteration {self.iter - 1}; last checkpoint: {self._last_checkpoint_path()}."
            )
        self._note_skipped_records(everyone)
        self._agreed_stop = next((m["stop"] for m in everyone if m["stop"]), None)
        self._optimizer_step()
        self.check_weights(f"after the optimizer step of iteration {self.iter}")
        self._write_metrics(everyone, time.perf_counter() - t0)


class AMPTrainer(SimpleTrainer):
    """:class:`SimpleTrainer` under ``torch.autocast``; fp16 on CUDA scales the loss with a GradScaler.

    ``amp_dtype``: "bf16" or "fp16" (``SOLVER.AMP.DTYPE``). The scaler's state is part of the checkpoint.
    """

    def __init__(self, model: nn.Module, data_loader: Optional[Iterable[Any]], optimizer: torch.optim.Optimizer, *,
                 amp_dtype: str = "bf16", **kwargs: Any):
        super().__init__(model, data_loader, optimizer, **kwargs)
        if amp_dtype not in ("bf16", "fp16"):
            raise ValueError(f"amp_dtype={amp_dtype!r} (SOLVER.AMP.DTYPE): expected one of ['bf16', 'fp16']")
        self.amp_dtype = amp_dtype_of(amp_dtype)
        self._device_type = self._model_device_type()
        self.grad_scaler = torch.amp.GradScaler("cuda") if (
            self.amp_dtype is torch.float16 and self._device_type == "cuda") else None

    def _autocast(self) -> Any:
        return torch.autocast(device_type=self._device_type, dtype=self.amp_dtype)

    def _backward(self, losses: torch.Tensor) -> None:
        if self.grad_scaler is None:
            losses.backward()
        else:
            self.grad_scaler.scale(losses).backward()

    def _unscale(self) -> None:
        if self.grad_scaler is not None:  # once per step, after every micro-batch's backward
            self.grad_scaler.unscale_(self.optimizer)

    def _optimizer_step(self) -> None:
        if self.grad_scaler is None:
            self.optimizer.step()
        else:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()

    def _checks_gradients(self) -> bool:
        # with a GradScaler, inf gradients are expected now and then: the scaler skips that step
        return self.grad_scaler is None

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if self.grad_scaler is not None and "grad_scaler" in state:
            self.grad_scaler.load_state_dict(state["grad_scaler"])


#: detectron2-style entry point: ``Trainer.from_config(cfg, model, data_loader)``.
Trainer = SimpleTrainer
