"""Validation of a registered dataset split (the logic of ``tools/check_dataset.py``).

It loads the records through ``DatasetCatalog`` (so it tests exactly what training/evaluation will read)
and then decodes the files: broken or truncated images, label maps of the wrong size, label values
outside ``[0, num_classes)`` plus the ignore label, object-conditioned records whose object is not in the
object map, files on disk that no record pairs. Each check yields OK / WARN / FAIL with a short detail.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from PIL import Image

from partcatseg.data.catalog import DatasetCatalog, MetadataCatalog, dataset_vocabulary_key
from partcatseg.vocab import get_part_dataset

from .common import file_stem, list_files

__all__ = ["CheckResult", "check_dataset", "format_report", "has_failures"]

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
_MAX_EXAMPLES = 3


@dataclass
class CheckResult:
    check: str
    status: str
    detail: str = ""


@dataclass
class _Problems:
    """Collects failing files per check, keeping a few examples."""

    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, check: str, message: str) -> None:
        self.counts[check] += 1
        if len(self.examples[check]) < _MAX_EXAMPLES:
            self.examples[check].append(message)

    def result(self, check: str, total: int, what: str, status_if_bad: str = FAIL) -> CheckResult:
        n = self.counts.get(check, 0)
        if n == 0:
            return CheckResult(check, OK, f"{total} {what} checked")
        return CheckResult(check, status_if_bad, f"{n} of {total} {what}: " + "; ".join(self.examples[check]))


def _family(name: str) -> str:
    key = dataset_vocabulary_key(name)
    if key in ("pascal_part_116", "toy_part"):
        return "pascal"
    if key == "ade_part_234":
        return "ade"
    if key in ("partimagenet", "partimagenet_ood"):
        return "partimagenet"
    return "semantic"


def _load_image(path: str) -> tuple[Optional[tuple[int, int]], Optional[str]]:
    """(height, width) of a fully decoded image, or an error message."""
    try:
        with Image.open(path) as im:
            im.load()  # decodes everything: truncated files raise here, not at open()
            return (im.height, im.width), None
    except Exception as e:  # noqa: BLE001 - every decoding error is a finding
        return None, f"{path}: {type(e).__name__}: {e}"


def _load_labels(path: str) -> tuple[Optional[np.ndarray], Optional[str]]:
    try:
        with Image.open(path) as im:
            return np.asarray(im), None
    except Exception as e:  # noqa: BLE001
        return None, f"{path}: {type(e).__name__}: {e}"


def _unpaired(image_root: str, gt_root: str, image_ext: str, gt_ext: str) -> tuple[list[str], list[str]]:
    if not (os.path.isdir(image_root) and os.path.isdir(gt_root)):
        return [], []
    images = {file_stem(n) for n in list_files(image_root, image_ext)}
    gts = {file_stem(n) for n in list_files(gt_root, gt_ext)}
    return sorted(images - gts), sorted(gts - images)


def check_dataset(name: str, max_records: Optional[int] = None, progress: bool = True) -> list[CheckResult]:
    """Run every check on the registered split ``name``; see the module docstring."""
    from tqdm import tqdm

    results: list[CheckResult] = []
    if name not in DatasetCatalog:
        return [CheckResult("registered", FAIL, f"'{name}' is not registered; known: {', '.join(DatasetCatalog.list())}")]
    meta = MetadataCatalog.get(name)
    results.append(CheckResult("registered", OK, f"image_root={meta.get('image_root')}"))
    try:
        records = DatasetCatalog.get(name)
    except Exception as e:  # noqa: BLE001 - the loader's message is the finding
        results.append(CheckResult("records", FAIL, f"{type(e).__name__}: {e}"))
        return results
    if not records:
        results.append(CheckResult("records", FAIL, "the loader returned no records"))
        return results
    n_images = len({r["file_name"] for r in records})
    results.append(CheckResult("records", OK, f"{len(records)} records, {n_images} images"))

    family = _family(name)
    key = dataset_vocabulary_key(name)
    ignore = int(meta.ignore_label)
    if family == "semantic":
        num_classes, num_objects = len(meta.stuff_classes), None
    else:
        ds = get_part_dataset(key)
        num_classes, num_objects = len(ds.class_names), len(ds.obj_classes)
    num_part_categories = len(get_part_dataset(key).part_categories) if family == "partimagenet" else None

    # -- fields
    required = ["file_name"]
    if family in ("pascal", "ade", "semantic"):
        required.append("sem_seg_file_name")
    if family == "pascal":
        required.append("obj_sem_seg_file_name")
    if family == "ade":
        required.append("obj_annotations")
    if family == "partimagenet":
        required += ["obj_part_annotations", "obj_class_id"]
    missing_fields = [(i, k) for i, r in enumerate(records) for k in required if k not in r]
    results.append(CheckResult(
        "record fields", FAIL if missing_fields else OK,
        f"missing {missing_fields[:_MAX_EXAMPLES]}" if missing_fields else f"all records have {required}"))

    # -- pairing of the files on disk (folder-based datasets)
    if family in ("pascal", "semantic") and meta.get("image_root") and meta.get("sem_seg_root"):
        gt_ext = meta.get("gt_ext", "png")
        no_gt, no_img = _unpaired(meta.image_root, meta.sem_seg_root, "jpg", gt_ext)
        detail = f"{len(no_gt)} images without annotation, {len(no_img)} annotations without image"
        if no_gt or no_img:
            detail += f" (e.g. {(no_gt + no_img)[:_MAX_EXAMPLES]})"
        if family == "pascal":
            status = FAIL if (no_gt or no_img) else OK
        else:  # VOC / Pascal Context share an image folder with other splits: extra images are normal
            status = WARN if no_img else OK
        results.append(CheckResult("image/annotation pairing", status, detail))

    subset = records if max_records is None else records[:max_records]
    problems = _Problems()
    image_sizes: dict[str, Optional[tuple[int, int]]] = {}
    label_cache: dict[str, Optional[tuple[tuple[int, int], np.ndarray]]] = {}

    def labels(path: str, check: str) -> Optional[tuple[tuple[int, int], np.ndarray]]:
        if path not in label_cache:
            arr, err = _load_labels(path)
            if err:
                problems.add(check, err)
                label_cache[path] = None
            else:
                label_cache[path] = (arr.shape[:2], np.unique(arr))
        return label_cache[path]

    n_labels = n_obj_labels = n_ann = n_cond = 0
    for r in tqdm(subset, disable=not progress, desc=f"checking {name}"):
        f = r["file_name"]
        if f not in image_sizes:
            size, err = _load_image(f)
            image_sizes[f] = size
            if err:
                problems.add("images decode", err)
            elif "height" in r and (r["height"], r["width"]) != size:
                problems.add("record size", f"{f}: record says {r['height']}x{r['width']}, image is {size[0]}x{size[1]}")
        size = image_sizes[f]
        sem = r.get("sem_seg_file_name")
        if sem and sem != "NA" and family != "partimagenet":
            n_labels += 1
            lab = labels(sem, "label files decode")
            if lab is not None:
                if size is not None and lab[0] != size:
                    problems.add("label sizes", f"{sem}: {lab[0][0]}x{lab[0][1]} vs image {size[0]}x{size[1]}")
                bad = [int(v) for v in lab[1] if v != ignore and not 0 <= v < num_classes]
                if bad:
                    problems.add("part label range", f"{sem}: values {bad[:5]} not in [0, {num_classes}) or {ignore}")
        obj = r.get("obj_sem_seg_file_name")
        if obj and obj != "NA":
            n_obj_labels += 1
            lab = labels(obj, "label files decode")
            if lab is not None:
                if size is not None and lab[0] != size:
                    problems.add("label sizes", f"{obj}: {lab[0][0]}x{lab[0][1]} vs image {size[0]}x{size[1]}")
                bad = [int(v) for v in lab[1] if v != ignore and not 0 <= v < num_objects]
                if bad:
                    problems.add("object label range", f"{obj}: values {bad[:5]} not in [0, {num_objects}) or {ignore}")
                if "category_id" in r:
                    n_cond += 1
                    if r["category_id"] not in set(int(v) for v in lab[1]):
                        problems.add("obj-condition objects", f"{obj}: object {r['category_id']} not in the map")
        anns = r.get("obj_annotations") if family == "ade" else r.get("obj_part_annotations")
        limit = num_objects if family == "ade" else num_part_categories
        for a in anns or []:
            n_ann += 1
            if not 0 <= int(a.get("category_id", -1)) < limit:
                problems.add("annotation ids", f"{f}: category_id {a.get('category_id')} not in [0, {limit})")
        if family == "partimagenet" and not 0 <= int(r.get("obj_class_id", -1)) < num_objects:
            problems.add("annotation ids", f"{f}: obj_class_id {r.get('obj_class_id')} not in [0, {num_objects})")

    checked = f" (first {len(subset)} records)" if len(subset) < len(records) else ""
    results.append(problems.result("images decode", len(image_sizes), "images" + checked))
    if any(k in r for r in subset for k in ("height",)):
        results.append(problems.result("record size", len(image_sizes), "images"))
    if n_labels or n_obj_labels:
        results.append(problems.result("label files decode", len(label_cache), "label files"))
        results.append(problems.result("label sizes", n_labels + n_obj_labels, "label maps"))
    if n_labels:
        results.append(problems.result("part label range", n_labels, "label maps"))
    if n_obj_labels:
        results.append(problems.result("object label range", n_obj_labels, "object maps"))
    if n_cond:
        results.append(problems.result("obj-condition objects", n_cond, "object-conditioned records"))
    if family in ("ade", "partimagenet"):
        results.append(problems.result("annotation ids", n_ann, "annotations"))
    return results


def has_failures(results: list[CheckResult]) -> bool:
    return any(r.status == FAIL for r in results)


def format_report(name: str, results: list[CheckResult], width: int = 110) -> str:
    from tabulate import tabulate

    def clip(s: str) -> str:
        s = s.replace("\n", " | ")
        return s if len(s) <= width else s[: width - 3] + "..."

    table = tabulate([(r.check, r.status, clip(r.detail)) for r in results], headers=["check", "status", "details"],
                     tablefmt="github")
    verdict = "FAILED" if has_failures(results) else "passed"
    report = f"Dataset '{name}': {verdict}\n{table}"
    long = [r for r in results if r.status in (FAIL, WARN) and len(r.detail.replace("\n", " | ")) > width]
    for r in long:  # the table clips long messages; print them whole below it
        report += f"\n\n[{r.status}] {r.check}:\n{r.detail}"
    return report
