"""Helpers shared by the dataset loaders: file listing, ``load_sem_seg``, COCO-json parsing, errors.

The loaders return detectron2 "dataset dicts" (plain ``list[dict]``); nothing here reads pixels
except ``collect_mask_labels``, so listing a split stays fast even for 20k-image datasets.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import PurePath
from typing import Any, Iterable, Optional, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetFilesError",
    "list_files",
    "file_stem",
    "missing_dir_error",
    "require_dir",
    "require_file",
    "require_files_exist",
    "replace_path_component",
    "load_sem_seg",
    "load_coco_instances",
    "read_json",
    "count_mask_labels",
    "collect_mask_labels",
    "BOX_MODE_XYWH_ABS",
]

# detectron2 ``BoxMode.XYWH_ABS`` is an IntEnum whose value is 1; records carry the plain int.
BOX_MODE_XYWH_ABS = 1


class DatasetFilesError(FileNotFoundError):
    """A split's files are missing or inconsistent; the message says what is expected and how to fix it.

    ``summary`` (one line: what is missing, where) and ``fix`` (the command that prepares it) are set
    when known, so a command line can report the problem in two lines without the layout listing.
    """

    def __init__(self, message: str, *, summary: str = "", fix: str = "") -> None:
        super().__init__(message)
        self.summary = summary or message.splitlines()[0]
        self.fix = fix

    def __str__(self) -> str:  # OSError would format (errno, strerror) pairs; keep the message
        return str(self.args[0]) if self.args else ""


def _is_hidden_junk(name: str) -> bool:
    # macOS resource forks ("._x.jpg") ship inside the official tarballs and break name matching.
    return name.startswith("._")


def list_files(directory: str, ext: str) -> list[str]:
    """Names (not paths) of the regular files in ``directory`` ending with ``ext``, sorted, ``._*`` skipped."""
    with os.scandir(directory) as it:
        names = [e.name for e in it if e.name.endswith(ext) and not _is_hidden_junk(e.name) and e.is_file()]
    return sorted(names)


def file_stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0]


def missing_dir_error(dataset: str, path: str, layout: str, command: str, what: str = "directory") -> DatasetFilesError:
    summary = f"{dataset}: expected {what} '{path}' does not exist"
    return DatasetFilesError(
        f"{summary}.\n"
        f"Expected layout under the dataset root ($DETECTRON2_DATASETS, default 'datasets'):\n"
        f"{layout.rstrip()}\n"
        f"Prepare it with:\n  {command}\n"
        f"(see datasets/README.md)",
        summary=summary,
        fix=f"{command}   (datasets/README.md; dataset root: $DETECTRON2_DATASETS)",
    )


def require_dir(path: str, dataset: str, layout: str, command: str) -> None:
    if not os.path.isdir(path):
        raise missing_dir_error(dataset, path, layout, command)


def require_file(path: str, dataset: str, layout: str, command: str) -> None:
    if not os.path.isfile(path):
        raise missing_dir_error(dataset, path, layout, command, what="file")


def require_files_exist(paths: Sequence[str], what: str, dataset: str, hint: str) -> None:
    """Raise ``DatasetFilesError`` naming (up to 5 of) ``paths`` that do not exist.

    Existence is tested against one directory listing per folder rather than one ``stat`` per file.
    """
    listings: dict[str, set[str]] = {}
    missing = []
    for p in paths:
        d, n = os.path.split(p)
        if d not in listings:
            listings[d] = set(os.listdir(d)) if os.path.isdir(d) else set()
        if n not in listings[d]:
            missing.append(p)
    if missing:
        shown = "\n  ".join(missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetFilesError(
            f"{dataset}: {len(missing)} of {len(paths)} {what} do not exist:\n  {shown}{more}\n{hint}"
        )


def replace_path_component(path: str, old: str, new: str) -> str:
    """Replace the last directory component equal to ``old`` by ``new``.

    Used instead of the official ``str.replace('part', 'obj')`` on whole paths, which also rewrites any
    "part" inside the dataset root (e.g. ``/data/partimagenet/...``).
    """
    parts = list(PurePath(path).parts)
    for i in range(len(parts) - 2, -1, -1):  # directories only, never the file name itself
        if parts[i] == old:
            parts[i] = new
            return os.path.join(*parts)
    raise ValueError(f"Path '{path}' has no directory component '{old}' to replace by '{new}'")


def load_sem_seg(
    gt_root: str,
    image_root: str,
    gt_ext: str = "png",
    image_ext: str = "jpg",
    *,
    dataset: str = "dataset",
    layout: str = "",
    command: str = "",
) -> list[dict[str, str]]:
    """detectron2 ``load_sem_seg``: one ``{file_name, sem_seg_file_name}`` per image with a GT file.

    Images and GT files are matched by file stem and sorted by stem. When the two folders differ, the
    official code uses their intersection with a warning; we do the same (always matching by stem —
    the official code zips the sorted lists blindly when the counts happen to be equal).
    """
    require_dir(image_root, dataset, layout, command)
    require_dir(gt_root, dataset, layout, command)
    images = {file_stem(n): n for n in list_files(image_root, image_ext)}
    gts = {file_stem(n): n for n in list_files(gt_root, gt_ext)}
    if not gts:
        raise DatasetFilesError(
            f"{dataset}: no '*{gt_ext}' annotation files found in '{gt_root}'.\nPrepare it with:\n  {command}"
        )
    common = sorted(images.keys() & gts.keys())
    if len(common) != len(images) or len(common) != len(gts):
        logger.warning(
            "%s: '%s' has %d images and '%s' has %d annotation files; using their intersection of %d "
            "(dropped %d images without annotation and %d annotations without image)",
            dataset, image_root, len(images), gt_root, len(gts), len(common),
            len(images) - len(common), len(gts) - len(common),
        )
    return [
        {"file_name": os.path.join(image_root, images[s]), "sem_seg_file_name": os.path.join(gt_root, gts[s])}
        for s in common
    ]


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _valid_segmentation(segm: Any) -> Any:
    """detectron2 ``load_coco_json`` segmentation handling; returns None when the instance must be dropped."""
    if isinstance(segm, dict):
        if isinstance(segm.get("counts"), list):  # uncompressed RLE -> compressed RLE
            import pycocotools.mask as mask_util

            segm = mask_util.frPyObjects(segm, *segm["size"])
        return segm
    polys = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]  # polygons need >= 3 points
    return polys or None


def load_coco_instances(json_file: str, image_root: str, *, dataset: str = "dataset") -> list[dict[str, Any]]:
    """detectron2 ``load_coco_json(json_file, image_root)`` without a dataset name (category ids kept as-is).

    One record per image (sorted by image id) with ``file_name``, ``height``, ``width``, ``image_id`` and
    ``annotations`` (``iscrowd``, ``bbox``, ``category_id``, ``segmentation``, ``bbox_mode`` = XYWH_ABS).
    Polygons with fewer than 3 points are dropped, and instances left without a polygon are skipped.
    """
    data = read_json(json_file)
    for key in ("images", "annotations"):
        if key not in data:
            raise ValueError(f"{json_file}: not a COCO-style json (missing '{key}')")
    images = sorted(data["images"], key=lambda im: im["id"])
    by_image: dict[Any, list[dict]] = {im["id"]: [] for im in images}
    ann_ids = []
    n_orphans = 0
    for ann in data["annotations"]:
        if ann["image_id"] not in by_image:
            n_orphans += 1
            continue
        by_image[ann["image_id"]].append(ann)
        if "id" in ann:
            ann_ids.append(ann["id"])
    if n_orphans:
        logger.warning("%s: %d annotations refer to images that are not in the file", json_file, n_orphans)
    if len(set(ann_ids)) != len(ann_ids):
        raise ValueError(f"Annotation ids in '{json_file}' are not unique!")
    records = []
    n_dropped = 0
    for im in images:
        objs = []
        for ann in by_image[im["id"]]:
            if ann.get("ignore", 0) != 0:
                raise ValueError(f"{json_file}: '\"ignore\"' in COCO json annotations is not supported (id {ann.get('id')})")
            obj = {k: ann[k] for k in ("iscrowd", "bbox", "keypoints", "category_id") if k in ann}
            if "bbox" in obj and len(obj["bbox"]) == 0:
                raise ValueError(f"{json_file}: an annotation of image {im['id']} has an empty 'bbox'")
            segm = ann.get("segmentation")
            if segm:
                segm = _valid_segmentation(segm)
                if segm is None:
                    n_dropped += 1
                    continue
                obj["segmentation"] = segm
            obj["bbox_mode"] = BOX_MODE_XYWH_ABS
            objs.append(obj)
        records.append(
            {
                "file_name": os.path.join(image_root, im["file_name"]),
                "height": im["height"],
                "width": im["width"],
                "image_id": im["id"],
                "annotations": objs,
            }
        )
    if n_dropped:
        logger.warning("%s: filtered out %d instances without a valid polygon", json_file, n_dropped)
    logger.info("%s: loaded %d images from %s", dataset, len(records), json_file)
    return records


def count_mask_labels(path: str, ignore: Iterable[int] = (255,)) -> list[int]:
    """Sorted label values present in a label image, without the ignore values."""
    from PIL import Image

    with Image.open(path) as im:
        values = np.unique(np.asarray(im))
    skip = set(int(i) for i in ignore)
    return [int(v) for v in values if int(v) not in skip]


def _count_one(args: tuple[str, tuple[int, ...]]) -> list[int]:
    return count_mask_labels(args[0], args[1])


def collect_mask_labels(
    gt_dir: str,
    out_json: Optional[str] = None,
    *,
    ignore: Iterable[int] = (255,),
    ext: str = ".png",
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, list[int]]:
    """The official ``mask_cls_collect.py``: ``{png basename: [label ids present, ignore removed]}``.

    Non-recursive over ``gt_dir``; keys are sorted (the official order is glob order). Written as
    compact JSON like the original. Pascal-Part needs it for ``{split}_obj_label_count.json``.
    """
    if not os.path.isdir(gt_dir):
        raise FileNotFoundError(f"Annotation directory '{gt_dir}' does not exist")
    names = list_files(gt_dir, ext)
    ignore = tuple(int(i) for i in ignore)
    jobs = [(os.path.join(gt_dir, n), ignore) for n in names]
    from tqdm import tqdm

    if num_workers and num_workers > 1 and len(jobs) > 1:
        from multiprocessing import Pool

        with Pool(num_workers) as pool:
            counts = list(tqdm(pool.imap(_count_one, jobs, chunksize=16), total=len(jobs),
                               disable=not progress, desc=f"labels in {gt_dir}"))
    else:
        counts = [_count_one(j) for j in tqdm(jobs, disable=not progress, desc=f"labels in {gt_dir}")]
    result = dict(zip(names, counts))
    if out_json is not None:
        os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
        with open(out_json, "w", encoding="utf-8") as f:
            json.dump(result, f)
    return result
