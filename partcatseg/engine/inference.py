"""Running a model over a test loader into detectron2-style evaluators (``reset/process/evaluate``)."""
from __future__ import annotations

import contextlib
import datetime
import logging
import time
from typing import Any, Dict, Iterable, Iterator, Mapping, Sequence, Union

import torch
from torch import nn

from . import comm

__all__ = ["inference_context", "inference_on_dataset"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def inference_context(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def inference_on_dataset(model: nn.Module, data_loader: Iterable[Any], evaluator: Union[Any, Sequence[Any]],
                         log_period_s: float = 5.0) -> Dict[str, Any]:
    """Run ``model`` (eval mode, no grad) over ``data_loader`` and return the evaluator results.

    ``evaluator`` may be a list; their result dicts are merged (duplicate keys are an error).
    Every rank must call this (evaluators reduce across ranks); ranks whose evaluator returns
    ``None`` get ``{}``.
    """
    evaluators = list(evaluator) if isinstance(evaluator, (list, tuple)) else [evaluator]
    for e in evaluators:
        e.reset()
    total = len(data_loader) if hasattr(data_loader, "__len__") else None
    start = time.perf_counter()
    last_log = start
    n = 0
    with contextlib.ExitStack() as stack:
        stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        for n, inputs in enumerate(data_loader, 1):
            outputs = model(inputs)
            for e in evaluators:
                e.process(inputs, outputs)
            now = time.perf_counter()
            if now - last_log > log_period_s:
                per = (now - start) / n
                eta = f", ETA {datetime.timedelta(seconds=int(per * (total - n)))}" if total else ""
                logger.info("Inference done %d/%s. %.4f s / iter%s", n, total if total else "?", per, eta)
                last_log = now
    elapsed = time.perf_counter() - start
    logger.info("Total inference time: %s for %d batches (%.4f s / iter per device, on %d device(s))",
                datetime.timedelta(seconds=int(elapsed)), n, elapsed / max(n, 1), comm.get_world_size())
    results: Dict[str, Any] = {}
    for e in evaluators:
        r = e.evaluate()
        if not r:
            continue
        if not isinstance(r, Mapping):
            raise TypeError(f"{type(e).__name__}.evaluate() returned {type(r).__name__}, expected a dict")
        dup = set(r) & set(results)
        if dup:
            raise ValueError(f"evaluators returned the same result key(s) {sorted(dup)}")
        results.update(r)
    return results
