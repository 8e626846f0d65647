"""Train / test data loaders with detectron2 sampling semantics, deterministic and resumable.

Training (detectron2 ``TrainingSampler`` + ``MapDataset`` + trivial collation):

* The global sample stream is an infinite concatenation of permutations of the dataset. Epoch ``e``'s
  permutation is ``torch.randperm`` under a generator seeded from ``(seed, e)`` (detectron2 draws all
  epochs from one generator; making each epoch a function of its number is what allows jumping to any
  position without replaying the stream).
* Rank ``r`` of ``W`` takes stream positions ``r, r + W, r + 2W, ...`` (detectron2 sharding); each rank's
  batch is ``total_batch_size / W`` consecutive items of its share, so iteration ``k`` of rank ``r``
  maps global positions ``r + W * (k * b + j)``, ``j < b``.
* Gradient accumulation (``accumulation_steps=K``): rank ``r`` hands out ``K`` micro-batches of
  ``b = total_batch_size / (W * K)`` per iteration; micro-batch ``k`` is what rank ``r * K + k`` of a
  ``W * K``-process job would take, so the optimizer step sees exactly the images of that larger job
  (the official 4 GPUs x 1 image on one device: ``K=4``, ``b=1``). ``K=1`` is the plain sharding above.
* Sample at global position ``p`` is augmented with ``AugRandom.from_seed(seed, p, attempt)``: the
  result depends only on (seed, p), never on worker count or scheduling. Starting at ``start_iter=k``
  therefore yields exactly the batches an uninterrupted run yields from iteration ``k`` on.
* A record whose mapper returns ``None`` (e.g. a crop without part pixels) is replaced by another record
  drawn uniformly from the whole dataset with a generator seeded from ``(seed, p, attempt)``; the
  replacement is mapped with its own per-attempt RNG, retried up to ``max_fallback_attempts`` times.
  (Official: ``MapDataset`` draws replacements with ``random.Random(42)`` per worker copy and removes
  failed indices from the pool, so its choices depend on worker scheduling.)
* A record whose mapper raises ``BadRecordError`` (unreadable / truncated image, bad label) stops
  training with that error, naming the file (default). With ``skip_bad_records`` it is replaced like
  a ``None`` record (same deterministic draw, so a resumed run stays bit-identical) and reported:
  :meth:`TrainLoader.pop_skipped` hands the reports to the trainer, which logs, records and limits
  them (``max_bad_records``).
* Aspect-ratio grouping is not implemented: with the official 1 image per GPU it has no effect, and
  training images are all padded to the same square size anyway.

Testing (detectron2 ``InferenceSampler``): rank ``r`` maps the contiguous shard
``[r * s, min((r + 1) * s, n))`` with ``s = ceil(n / W)`` (detectron2 0.6). Records mapped to ``None``
are skipped and reported (official: replaced by a random record, which evaluates some records
twice); records raising ``BadRecordError`` either abort (default) or are skipped and reported.
Batches are lists of dicts (detectron2 ``trivial_batch_collator``).
"""
from __future__ import annotations

import logging
import pickle
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from .mappers import BadRecordError
from .transforms import AugRandom

__all__ = [
    "SerializedRecords",
    "TrainingStream",
    "inference_shard",
    "dist_rank_world",
    "trivial_batch_collator",
    "build_train_loader",
    "build_test_loader",
    "TrainLoader",
    "TestLoader",
    "SkippedRecord",
    "SkippedTrainRecord",
]

logger = logging.getLogger(__name__)

Mapper = Callable[..., Optional[dict]]
_FALLBACK_STREAM = 1  # SeedSequence tag separating the replacement draws from the augmentation draws


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def trivial_batch_collator(batch: list) -> list:
    """A batch is the list of mapped dicts (images of different sizes cannot be stacked here)."""
    return batch


def dist_rank_world(rank: Optional[int] = None, world_size: Optional[int] = None) -> tuple[int, int]:
    """Explicit values win; otherwise torch.distributed's when initialised, else (0, 1)."""
    if world_size is None:
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"Invalid distributed layout: rank={rank}, world_size={world_size}")
    return int(rank), int(world_size)


class SerializedRecords:
    """Records pickled into one numpy buffer (as detectron2 ``DatasetFromList(serialize=True)``).

    Many small Python dicts shared with forked workers get copied page by page as reference counts
    change; one flat buffer does not.
    """

    def __init__(self, records: Sequence[dict]) -> None:
        blobs = [np.frombuffer(pickle.dumps(r, protocol=-1), dtype=np.uint8) for r in records]
        self._offsets = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, i: int) -> dict:
        start = 0 if i == 0 else int(self._offsets[i - 1])
        return pickle.loads(memoryview(self._buffer[start : int(self._offsets[i])]))


def _file_of(record: dict) -> str:
    return str(record.get("file_name", "<record without file_name>"))


def _worker_init(worker_id: int) -> None:
    # Mapping work is per-sample; one intra-op thread per worker avoids oversubscribing the CPU.
    torch.set_num_threads(1)
    # Nothing here uses global RNGs, but keep them distinct per worker for any third-party code.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
# consecutive replacements of one training sample after which a warning is logged
_REPLACEMENT_WARNING = 10


class TrainingStream:
    """Global position -> dataset index for the infinite shuffled stream (see module docstring)."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, cache_epochs: int = 2) -> None:
        if size <= 0:
            raise ValueError(f"TrainingStream: the dataset is empty (size={size})")
        if seed < 0:
            raise ValueError(f"TrainingStream: seed must be >= 0, got {seed}")
        self.size, self.seed, self.shuffle = int(size), int(seed), bool(shuffle)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_epochs = cache_epochs

    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        perm = self._cache.get(epoch)
        if perm is None:
            state = np.random.SeedSequence([self.seed, int(epoch)]).generate_state(2, dtype=np.uint32)
            g = torch.Generator()
            g.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)  # 63-bit seed
            perm = torch.randperm(self.size, generator=g).numpy()
            self._cache[epoch] = perm
            while len(self._cache) > self._cache_epochs:
                self._cache.popitem(last=False)
        return perm

    def index(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.size)
        return int(self.permutation(epoch)[offset])


@dataclass
class SkippedTrainRecord:
    """A training record that raised ``BadRecordError`` and was replaced (``skip_bad_records``)."""

    file_name: str
    reason: str
    index: int      # in the dataset
    position: int   # in the global sample stream
    attempt: int    # 0 = the record the stream named; > 0 = a replacement that was bad too

    def to_dict(self) -> dict:
        return {"file_name": self.file_name, "reason": self.reason, "index": self.index, "position": self.position,
                "attempt": self.attempt}


class _WithSkips:
    """A mapped sample plus the bad records replaced to get it (passed from loader workers)."""

    def __init__(self, sample: dict, skipped: list) -> None:
        self.sample, self.skipped = sample, skipped


_SKIP_HINT = ("train with --skip-bad-records (DATALOADER.SKIP_BAD_RECORDS True) to replace such records and list them "
              "in OUTPUT_DIR/skipped_train_records.json")


class _TrainDataset(Dataset):
    """Map-style view of the stream: item ``p`` = the mapped sample at global position ``p``."""

    def __init__(self, records: SerializedRecords, mapper: Mapper, stream: TrainingStream, max_attempts: int,
                 skip_bad: bool = False):
        self.records, self.mapper, self.stream = records, mapper, stream
        self.max_attempts = max_attempts
        self.skip_bad = skip_bad

    def __len__(self) -> int:  # positions are unbounded; DataLoader only needs this for samplers
        return 2**62

    def __getitem__(self, position: int) -> dict:
        seed = self.stream.seed
        index = self.stream.index(position)
        tried: list[int] = []
        skipped: list[SkippedTrainRecord] = []
        for attempt in range(self.max_attempts):
            record = self.records[index]
            try:
                out = self.mapper(record, AugRandom.from_seed(seed, position, attempt))
            except BadRecordError as e:
                if not self.skip_bad:
                    where = f"training record #{index}, stream position {position}; {_SKIP_HINT}"
                    if e.file_name is not None:
                        raise BadRecordError(e.file_name, f"{e.reason} ({where})") from e
                    raise BadRecordError(f"{e} ({where})") from e
                skipped.append(SkippedTrainRecord(e.file_name or _file_of(record), e.reason, index, position, attempt))
                logger.debug("training record %s is bad (%s): drawing a replacement", _file_of(record), e.reason)
                out = None
            if out is not None:
                return _WithSkips(out, skipped) if skipped else out
            tried.append(index)
            # A record maps to None when nothing labelled is left (a part-less object, a crop that misses
            # every part); it is replaced, as the official loader does. Only a long run is worth a warning.
            if attempt == _REPLACEMENT_WARNING - 1:
                logger.warning(
                    "Training records %s had no labelled part after augmentation %d times in a row (stream "
                    "position %d); still drawing replacements. A few are normal (part-less objects, crops that "
                    "miss the parts); many suggest labels that do not match the dataset's classes",
                    [_file_of(self.records[i]) for i in tried[-3:]], _REPLACEMENT_WARNING, position,
                )
            else:
                logger.debug("training record %s had no labelled part (position %d, attempt %d): replaced",
                             _file_of(record), position, attempt)
            pick = np.random.default_rng(np.random.SeedSequence([seed, position, attempt, _FALLBACK_STREAM]))
            index = int(pick.integers(len(self.records)))
        raise RuntimeError(
            f"No usable training sample at stream position {position} after {self.max_attempts} attempts; "
            f"records tried: {[_file_of(self.records[i]) for i in tried[:10]]}"
        )


class _RankBatchSampler(Sampler):
    """Infinite (micro-)batches of global positions for one rank, from iteration ``start_iter`` on.

    Each iteration yields ``accumulation_steps`` micro-batches; micro-batch ``k`` of rank ``r`` is the
    batch of virtual rank ``r * accumulation_steps + k`` among ``world_size * accumulation_steps``.
    """

    def __init__(self, rank: int, world_size: int, batch_size: int, start_iter: int,
                 accumulation_steps: int = 1) -> None:
        self.rank, self.world_size, self.batch_size, self.start_iter = rank, world_size, batch_size, start_iter
        self.accumulation_steps = accumulation_steps

    def micro_positions(self, iteration: int, micro: int) -> list[int]:
        virtual_rank = self.rank * self.accumulation_steps + micro
        virtual_world = self.world_size * self.accumulation_steps
        first = iteration * self.batch_size
        return [virtual_rank + virtual_world * (first + j) for j in range(self.batch_size)]

    def positions(self, iteration: int) -> list[int]:
        """Every position this rank maps at ``iteration`` (all its micro-batches, in order)."""
        return [p for k in range(self.accumulation_steps) for p in self.micro_positions(iteration, k)]

    def __iter__(self) -> Iterator[list[int]]:
        it = self.start_iter
        while True:
            for k in range(self.accumulation_steps):
                yield self.micro_positions(it, k)
            it += 1


@dataclass
class TrainLoader:
    """Infinite iterable of per-rank batches (list of mapped dicts) starting at ``start_iter``.

    ``skip_bad_records``: records raising ``BadRecordError`` are replaced; the reports of the batches
    handed out so far are collected until :meth:`pop_skipped`. ``max_bad_records`` (-1 = no limit) is
    enforced by the trainer, which sees every rank's reports.
    """

    loader: DataLoader
    stream: TrainingStream
    batch_sampler: _RankBatchSampler
    skip_bad_records: bool = False
    max_bad_records: int = -1
    _skipped: list = field(default_factory=list, repr=False)

    @property
    def start_iter(self) -> int:
        return self.batch_sampler.start_iter

    @property
    def batch_size(self) -> int:
        """Images per rank per forward/backward (per micro-batch)."""
        return self.batch_sampler.batch_size

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per rank per iteration (optimizer step); each is one item of the iteration."""
        return self.batch_sampler.accumulation_steps

    def record_indices(self, iteration: int) -> list[int]:
        """Dataset indices this rank draws at ``iteration``, all micro-batches (before any None replacement)."""
        return [self.stream.index(p) for p in self.batch_sampler.positions(iteration)]

    def pop_skipped(self) -> list[dict]:
        """Reports (``SkippedTrainRecord.to_dict()``) of the bad records replaced since the last call."""
        out, self._skipped = [s.to_dict() for s in self._skipped], []
        return out

    def __iter__(self) -> Iterator[list[dict]]:
        for batch in self.loader:
            if any(isinstance(item, _WithSkips) for item in batch):
                unwrapped = []
                for item in batch:
                    if isinstance(item, _WithSkips):
                        self._skipped.extend(item.skipped)
                        item = item.sample
                    unwrapped.append(item)
                batch = unwrapped
            yield batch


def build_train_loader(
    dataset_dicts: Sequence[dict],
    mapper: Mapper,
    *,
    total_batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    start_iter: int = 0,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    shuffle: bool = True,
    max_fallback_attempts: int = 100,
    serialize: bool = True,
    skip_bad_records: bool = False,
    max_bad_records: int = -1,
    accumulation_steps: int = 1,
) -> TrainLoader:
    """Deterministic, resumable training loader (detectron2 ``TrainingSampler`` semantics).

    ``total_batch_size`` is the global batch (``SOLVER.IMS_PER_BATCH``), split evenly across ranks.
    ``mapper(record, rng)`` must accept the per-sample ``AugRandom``. Iteration ``k`` of the returned
    loader is the same for any ``num_workers`` and for any ``start_iter <= k``. ``skip_bad_records``
    replaces records raising ``BadRecordError`` (see the module docstring); ``max_bad_records`` is
    handed to the trainer (``DATALOADER.MAX_BAD_RECORDS``). ``accumulation_steps`` > 1 splits each rank's
    share into that many micro-batches per iteration, handed out one after the other (module docstring).
    """
    rank, world_size = dist_rank_world(rank, world_size)
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    if total_batch_size <= 0 or total_batch_size % (world_size * accumulation_steps):
        raise ValueError(
            f"total_batch_size={total_batch_size} must be a positive multiple of world_size={world_size} x "
            f"accumulation_steps={accumulation_steps}"
        )
    if start_iter < 0:
        raise ValueError(f"start_iter must be >= 0, got {start_iter}")
    if len(dataset_dicts) == 0:
        raise ValueError("build_train_loader: the dataset is empty")
    records = SerializedRecords(dataset_dicts) if serialize else list(dataset_dicts)
    stream = TrainingStream(len(records), seed, shuffle=shuffle)
    batch_sampler = _RankBatchSampler(rank, world_size, total_batch_size // (world_size * accumulation_steps),
                                      start_iter, accumulation_steps)
    loader = DataLoader(
        _TrainDataset(records, mapper, stream, max_fallback_attempts, skip_bad_records),  # type: ignore[arg-type]
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )
    logger.info(
        "Train loader: %d records, %d image(s)/rank/iter%s (rank %d of %d), seed %d, starting at iteration %d",
        len(records), batch_sampler.batch_size * accumulation_steps,
        f" in {accumulation_steps} micro-batches of {batch_sampler.batch_size}" if accumulation_steps > 1 else "",
        rank, world_size, seed, start_iter,
    )
    return TrainLoader(loader, stream, batch_sampler, skip_bad_records=bool(skip_bad_records),
                       max_bad_records=int(max_bad_records))


# ----------------------------------------------------------------------------------------------
# testing
# ----------------------------------------------------------------------------------------------
def inference_shard(size: int, rank: int, world_size: int) -> range:
    """detectron2 0.6 ``InferenceSampler``: contiguous shards of ``ceil(size / world_size)``."""
    shard = (size - 1) // world_size + 1 if size > 0 else 0
    return range(min(shard * rank, size), min(shard * (rank + 1), size))


@dataclass
class SkippedRecord:
    """A test record that produced no sample: ``reason`` is "none" (mapper returned None) or "bad"."""

    index: int
    file_name: str
    reason: str
    message: str


class _TestDataset(Dataset):
    def __init__(self, records: SerializedRecords, mapper: Mapper, skip_bad: bool) -> None:
        self.records, self.mapper, self.skip_bad = records, mapper, skip_bad

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Any:
        record = self.records[index]
        try:
            out = self.mapper(record, AugRandom.from_seed(0, index))
        except BadRecordError as e:
            # Returned, not raised, so that the main process reports it with its type and file name
            # whatever the number of workers.
            return SkippedRecord(index, _file_of(record), "bad", str(e))
        if out is None:
            cond = f" for category_id={record['category_id']}" if "category_id" in record else ""
            return SkippedRecord(index, _file_of(record), "none", f"mapper returned None (no part label left{cond})")
        return out


class TestLoader:
    """Iterable of batches (list of dicts) of this rank's shard; skipped records are collected.

    After (or during) an iteration ``skipped`` lists every ``SkippedRecord`` met so far in that pass;
    ``none_records`` / ``bad_records`` split it by reason.
    """

    def __init__(self, loader: DataLoader, indices: range, skip_bad_records: bool) -> None:
        self.loader = loader
        self.indices = indices
        self.skip_bad_records = skip_bad_records
        self.skipped: list[SkippedRecord] = []

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def none_records(self) -> list[SkippedRecord]:
        return [s for s in self.skipped if s.reason == "none"]

    @property
    def bad_records(self) -> list[SkippedRecord]:
        return [s for s in self.skipped if s.reason == "bad"]

    def __iter__(self) -> Iterator[list[dict]]:
        self.skipped = []
        for batch in self.loader:
            kept = []
            for item in batch:
                if not isinstance(item, SkippedRecord):
                    kept.append(item)
                    continue
                if item.reason == "bad" and not self.skip_bad_records:
                    raise BadRecordError(item.message)
                log = logger.warning if item.reason == "bad" else logger.debug
                log("Skipping test record #%d (%s): %s", item.index, item.file_name, item.message)
                self.skipped.append(item)
            if kept:
                yield kept
        if self.skipped:
            logger.debug(  # the evaluation runner reports them, with the reason and the file names
                "Test loader skipped %d record(s): %d mapped to None, %d unreadable/invalid",
                len(self.skipped), len(self.none_records), len(self.bad_records),
            )


def build_test_loader(
    dataset_dicts: Sequence[dict],
    mapper: Mapper,
    *,
    batch_size: int = 1,
    num_workers: int = 0,
    rank: Optional[int] = None,
    world_size: Optional[int] = None,
    skip_bad_records: bool = False,
    serialize: bool = True,
) -> TestLoader:
    """Loader over this rank's contiguous shard, in dataset order (detectron2 ``InferenceSampler``)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    rank, world_size = dist_rank_world(rank, world_size)
    records = SerializedRecords(dataset_dicts) if serialize else list(dataset_dicts)
    indices = inference_shard(len(records), rank, world_size)
    loader = DataLoader(
        _TestDataset(records, mapper, skip_bad_records),  # type: ignore[arg-type]
        sampler=list(indices),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )
    return TestLoader(loader, indices, skip_bad_records)
