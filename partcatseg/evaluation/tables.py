"""Readable tables and JSON/CSV files for evaluation results.

JSON files are strict JSON: NaN / inf are written as ``null`` (Python's ``json`` would otherwise emit
the non-standard ``NaN`` token).
"""
from __future__ import annotations

import csv
import json
import math
from typing import Any, Dict, Mapping, Optional, Sequence

from tabulate import tabulate

__all__ = [
    "summary_table",
    "semseg_table",
    "flatten_results",
    "write_json",
    "write_part_per_class_csv",
    "write_semseg_per_class_csv",
]

_SETTING_LABELS = (("oracle_obj", "Oracle-Obj"), ("pred_all", "Pred-All"))
_DEFINITION_TITLES = {
    "partcatseg": "partcatseg definition (PartCATSeg paper: mean over classes with IoU > 0)",
    "ovparts": "ovparts definition (OV-PARTS: mean over classes with GT or predictions, zeros counted)",
    "partclipseg": "partclipseg definition (PartCLIPSeg's evaluator: mean over classes with GT, zeros counted)",
}


def _fmt(value: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}"


def summary_table(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """The paper's layout — rows Oracle-Obj / Pred-All, columns seen / unseen / h-IoU — once per definition.

    Missing values (key absent or NaN) print as ``-``.
    """
    blocks = []
    for definition, title in _DEFINITION_TITLES.items():
        rows = []
        for key, label in _SETTING_LABELS:
            res = results.get(key, {}).get(definition)
            if res is None:
                continue
            rows.append([label, _fmt(res.get("mIoU-base")), _fmt(res.get("mIoU-unbase")), _fmt(res.get("h-IoU"))])
        if rows:
            table = tabulate(
                rows,
                headers=["Setting", "seen", "unseen", "h-IoU"],
                tablefmt="github",
                disable_numparse=True,  # keep the 2-decimal strings as formatted
                colalign=("left", "right", "right", "right"),
            )
            blocks.append(f"{title}\n{table}")
    return "\n\n".join(blocks)


def semseg_table(results: Mapping[str, Mapping[str, float]]) -> str:
    """One row per task with the summary semantic metrics."""
    cols = ["mIoU", "fwIoU", "mACC", "pACC"]
    rows = [[task] + [_fmt(res.get(c)) for c in cols] for task, res in results.items()]
    return tabulate(
        rows, headers=["task"] + cols, tablefmt="github", disable_numparse=True,
        colalign=("left",) + ("right",) * len(cols),
    )


def flatten_results(results: Mapping[str, Any], sep: str = "/") -> Dict[str, float]:
    """``{"oracle_obj": {"partcatseg": {"mIoU": x}}}`` -> ``{"oracle_obj/partcatseg/mIoU": x}`` (for loggers)."""
    flat: Dict[str, float] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(f"{prefix}{sep}{k}" if prefix else str(k), v)
        else:
            flat[prefix] = obj

    walk("", results)
    return flat


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy / torch scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON (NaN -> null), keeping key order."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_json_safe(obj), f, indent=2, allow_nan=False)
        f.write("\n")


def _csv_num(value: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4f}"


def write_part_per_class_csv(
    path: str,
    class_names: Sequence[str],
    base_class_indices: Optional[Sequence[int]],
    results: Mapping[str, Mapping[str, Mapping[str, float]]],
) -> None:
    """One row per class: name, split (base/novel, empty if unknown), IoU/ACC/Recall for both settings.

    Per-class numbers come from the ``partcatseg`` dicts (the official per-class values); empty cell = NaN.
    """
    base = None if base_class_indices is None else set(int(i) for i in base_class_indices)
    header = ["class", "split"]
    for key, _ in _SETTING_LABELS:
        header += [f"{key}_IoU", f"{key}_ACC", f"{key}_Recall"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, name in enumerate(class_names):
            split = "" if base is None else ("base" if i in base else "novel")
            row = [name, split]
            for key, _ in _SETTING_LABELS:
                res = results[key]["partcatseg"]
                row += [_csv_num(res.get(f"{m}-{name}")) for m in ("IoU", "ACC", "Recall")]
            writer.writerow(row)


def write_semseg_per_class_csv(path: str, class_names: Sequence[str], res: Mapping[str, float]) -> None:
    """One row per class: name, IoU, ACC (empty cell = NaN, i.e. the class has no GT)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "IoU", "ACC"])
        for name in class_names:
            writer.writerow([name, _csv_num(res.get(f"IoU-{name}")), _csv_num(res.get(f"ACC-{name}"))])
