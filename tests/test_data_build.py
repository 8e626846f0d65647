"""Train/test loaders: determinism, resumption, rank sharding, None replacement, bad records."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from partcatseg.data.build import (
    TrainingStream,
    build_test_loader,
    build_train_loader,
    inference_shard,
)
from partcatseg.data.mappers import BadRecordError, ObjPartSemanticMapper
from partcatseg.data.transforms import (
    AugRandom,
    ColorAugSSD,
    RandomCrop_CategoryAreaConstraint,
    RandomFlip,
    ResizeShortestEdge,
)


class EchoMapper:
    """Returns the record id plus numbers drawn from the per-sample RNG; None for records marked 'empty'."""

    def __call__(self, record: dict, rng: AugRandom | None = None):
        if record.get("empty"):
            return None
        if record.get("broken"):
            raise BadRecordError(record["file_name"], "cannot decode image (synthetic)")
        return {"id": record["id"], "file_name": record["file_name"], "np": float(rng.np.random()),
                "py": rng.py.random()}


def _records(n: int, **marks) -> list[dict]:
    recs = [{"id": i, "file_name": f"img_{i}.jpg"} for i in range(n)]
    for key, ids in marks.items():
        for i in ids:
            recs[i][key] = True
    return recs


def _take(loader, n: int) -> list[list[tuple]]:
    out = []
    for batch in loader:
        out.append([(d["id"], d["np"], d["py"]) for d in batch])
        if len(out) == n:
            break
    return out


def test_stream_is_a_sequence_of_seeded_permutations():
    stream = TrainingStream(7, seed=5)
    epochs = [[stream.index(p) for p in range(e * 7, (e + 1) * 7)] for e in range(3)]
    assert all(sorted(e) == list(range(7)) for e in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    again = TrainingStream(7, seed=5)
    assert [again.index(p) for p in range(20, 1, -1)] == [stream.index(p) for p in range(20, 1, -1)]
    assert [TrainingStream(7, seed=6).index(p) for p in range(21)] != sum(epochs, [])
    assert [TrainingStream(4, seed=0, shuffle=False).index(p) for p in range(6)] == [0, 1, 2, 3, 0, 1]


def test_train_loader_deterministic_and_resumable():
    recs = _records(10)
    full = _take(build_train_loader(recs, EchoMapper(), total_batch_size=3, seed=123), 8)
    assert len(full) == 8 and all(len(b) == 3 for b in full)
    assert full == _take(build_train_loader(recs, EchoMapper(), total_batch_size=3, seed=123), 8)
    assert full != _take(build_train_loader(recs, EchoMapper(), total_batch_size=3, seed=124), 8)
    ids = [x[0] for b in full for x in b]
    assert sorted(ids[:10]) == list(range(10))  # first epoch is a permutation
    resumed = _take(build_train_loader(recs, EchoMapper(), total_batch_size=3, seed=123, start_iter=5), 3)
    assert resumed == full[5:8]
    with_workers = build_train_loader(recs, EchoMapper(), total_batch_size=3, seed=123, start_iter=2, num_workers=2)
    assert _take(with_workers, 6) == full[2:8]
    assert with_workers.record_indices(4) == [x[0] for x in full[4]]


def test_train_loader_rank_sharding_partitions_the_global_stream():
    recs = _records(9)
    single = _take(build_train_loader(recs, EchoMapper(), total_batch_size=4, seed=7, rank=0, world_size=1), 5)
    ranks = [
        _take(build_train_loader(recs, EchoMapper(), total_batch_size=4, seed=7, rank=r, world_size=2), 5)
        for r in range(2)
    ]
    for it in range(5):
        assert len(ranks[0][it]) == len(ranks[1][it]) == 2  # IMS_PER_BATCH is global
        # global positions 4k..4k+3: rank 0 takes the even ones, rank 1 the odd ones (detectron2)
        assert ranks[0][it] == single[it][0::2]
        assert ranks[1][it] == single[it][1::2]
    with pytest.raises(ValueError, match="multiple of world_size=3"):
        build_train_loader(recs, EchoMapper(), total_batch_size=4, seed=0, rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        build_train_loader(recs, EchoMapper(), total_batch_size=4, seed=0, rank=2, world_size=2)


def test_none_records_are_replaced_deterministically():
    recs = _records(8, empty=[1, 4, 6])
    loader = build_train_loader(recs, EchoMapper(), total_batch_size=2, seed=3)
    batches = _take(loader, 12)
    ids = [x[0] for b in batches for x in b]
    assert len(ids) == 24 and not {1, 4, 6} & set(ids)
    # the stream did hit the empty records: they were substituted, not dropped
    drawn = [i for k in range(12) for i in loader.record_indices(k)]
    assert {1, 4, 6} & set(drawn)
    assert batches == _take(build_train_loader(recs, EchoMapper(), total_batch_size=2, seed=3, num_workers=2), 12)
    assert batches[6:] == _take(build_train_loader(recs, EchoMapper(), total_batch_size=2, seed=3, start_iter=6), 6)
    all_empty = build_train_loader(_records(3, empty=[0, 1, 2]), EchoMapper(), total_batch_size=1, seed=0,
                                   max_fallback_attempts=5)
    with pytest.raises(RuntimeError, match="after 5 attempts.*img_"):
        next(iter(all_empty))


def test_inference_shard_matches_detectron2():
    assert [list(inference_shard(5, r, 2)) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [list(inference_shard(5, r, 4)) for r in range(4)] == [[0, 1], [2, 3], [4], []]
    assert list(inference_shard(3, 0, 1)) == [0, 1, 2]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_test_loader_skips_none_and_handles_bad_records(num_workers):
    recs = _records(7, empty=[2], broken=[5])
    loader = build_test_loader(recs, EchoMapper(), num_workers=num_workers, skip_bad_records=True)
    ids = [d["id"] for batch in loader for d in batch]
    assert ids == [0, 1, 3, 4, 6]
    assert [(s.index, s.file_name) for s in loader.none_records] == [(2, "img_2.jpg")]
    assert [(s.index, s.file_name) for s in loader.bad_records] == [(5, "img_5.jpg")]
    assert "cannot decode" in loader.bad_records[0].message

    strict = build_test_loader(recs, EchoMapper(), num_workers=num_workers)
    with pytest.raises(BadRecordError, match="img_5.jpg: cannot decode"):
        for _ in strict:
            pass

    shard = build_test_loader(recs, EchoMapper(), batch_size=2, rank=1, world_size=2, skip_bad_records=True,
                              num_workers=num_workers)
    batches = [[d["id"] for d in b] for b in shard]
    assert batches == [[4], [6]]  # shard [4, 5, 6]: batches (4, 5) and (6,), record 5 skipped
    assert len(shard) == 2


def test_train_loader_with_real_mapper_is_worker_independent(tmp_path):
    rs = np.random.RandomState(0)
    recs = []
    for i in range(3):
        img = rs.randint(0, 256, (30 + i, 40, 3)).astype(np.uint8)
        obj = np.full(img.shape[:2], 255, np.uint8)
        obj[:, :25] = 7
        part = np.full(img.shape[:2], 255, np.uint8)
        part[:, :25] = 40
        paths = [tmp_path / f"{k}_{i}.png" for k in ("img", "part", "obj")]
        for p, a in zip(paths, (img, part, obj)):
            Image.fromarray(a).save(p)
        recs.append({"file_name": str(paths[0]), "sem_seg_file_name": str(paths[1]),
                     "obj_sem_seg_file_name": str(paths[2])})
    augs = [ResizeShortestEdge((24,), 48, "choice"), RandomCrop_CategoryAreaConstraint("absolute", (16, 16), 1.0, 255),
            ColorAugSSD("RGB"), RandomFlip()]
    mapper = ObjPartSemanticMapper(True, augmentations=augs, ignore_label=255, size_divisibility=16)

    def grab(num_workers, start_iter=0, n=4):
        out = []
        for batch in build_train_loader(recs, mapper, total_batch_size=2, seed=11, num_workers=num_workers,
                                        start_iter=start_iter):
            out.append(batch)
            if len(out) == n:
                return out

    a, b = grab(0), grab(2, start_iter=1, n=3)
    for x, y in zip(sum(a[1:], []), sum(b, [])):
        assert x["file_name"] == y["file_name"]
        for key in ("image", "sem_seg", "obj_part_sem_seg"):
            assert torch.equal(x[key], y[key])
        assert x["image"].shape == (3, 16, 16)
