"""The benchmark report as a plain-text table."""
from __future__ import annotations

import platform

__all__ = ["format_table", "cpu_name"]


def cpu_name() -> str:
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

    def rate_of(res: dict) -> str:
        u = res.get("utilization")
        if not u:
            return ""
        text = f"{u['gflops_per_second']:.1f} GFLOP/s {u['compute_dtype']}"
        return text + (f" ({100 * u['fraction_of_peak']:.0f}% of peak)" if "fraction_of_peak" in u else "")

    def batches(label: str, res: dict) -> None:
        for key in sorted((k for k in res if k.startswith("batch_")), key=lambda k: int(k.split("_")[1])):
            b = res[key]
            rows.append((f"{label} {key.replace('_', ' ')}", _fmt_stats(b["seconds_per_image"]) + " / image",
                         f"{b['images_per_second']:.3f} img/s", rate_of(b), mem_of(res)))

    for name, res in report["phases"].items():
        if name == "matmul_peak":
            for dtype, p in res["peaks"].items():
                rows.append((f"matmul peak {dtype}", f"{p['gflops_best']:.1f} GFLOP/s best (median "
                             f"{p['gflops_median']:.1f}; {p['size']}x{p['size']} mm)", "", "", ""))
        elif name.startswith("inference"):
            batches(name, res)
        elif name == "official":
            parts = res["startup"].get("breakdown_seconds", {})
            rows.append(("official start-up", _fmt_stats(res["startup"]["seconds"]),
                         ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()), "", mem_of(res["startup"])))
            batches("official inference", res["official"])
            batches("ours (interleaved)", res["ours"])
            p = res["official_parity"]
            rows.append(("official / ours", f"{res['speedup_median']:.2f}x per image; max |diff| sem_seg "
                         f"{p['sem_seg']:.1e}, sem_seg_all {p['sem_seg_all']:.1e}", "", "", ""))
        elif name == "accuracy":
            for mode, d in res["modes"].items():
                if mode == "reference":
                    continue
                rows.append((f"accuracy {mode}", f"max |diff| {d['max_abs_diff']:.1e}, mean {d['mean_abs_diff']:.1e}",
                             f"argmax agree {d['argmax_agreement']:.4f}", "", ""))
        elif name.startswith("stages"):
            total = res["seconds"]["median"]
            rows.append((f"{name} forward", _fmt_stats(res["seconds"]) + " / image", "", rate_of(res), ""))
            for stage, st in res["stages"].items():
                gflop = f"{st['gflop']:.1f} GFLOP" if st.get("gflop") is not None else ""
                share = f"{100 * st['seconds']['median'] / total:.0f}% of the forward" if total > 0 else ""
                rows.append((f"  {stage}", _fmt_stats(st["seconds"]), ", ".join(x for x in (share, gflop) if x),
                             rate_of(st), ""))
        elif name.startswith("train_step"):
            what = (f"{res['batch_size']} img/step" + (f" = {res['accumulation_steps']} x {res['micro_batch_size']}"
                    if res.get("accumulation_steps", 1) > 1 else "") + f", {res['image_size'][0]}x{res['image_size'][1]}")
            rows.append((name, _fmt_stats(res["seconds"]) + " / step", what, rate_of(res), mem_of(res)))
        else:
            rows.append((name, _fmt_stats(res["seconds"]), "", "", mem_of(res)))
    head = ("phase", "time (median, IQR, min)", "throughput", "achieved (of measured peak)", "peak RSS MiB (+section)")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    env = report["environment"]
    title = (f"{report['config_file']}  device={report['device']}  batch={report['batch_size']}  "
             f"image={report['image_size'][0]}x{report['image_size'][1]}  torch {env['torch']}, "
             f"{env['threads']} threads, {env['cpu']}, allocator: {env.get('allocator', 'not recorded')}")
    model = report.get("model", {})
    if model:
        title += "\nmodel: " + ", ".join(f"{k}={v}" for k, v in model.items())
    title += "\nsettings: " + ", ".join(f"{k}={v}" for k, v in report["settings"].items())
    notes = list(report.get("notes", []))
    notes += [f"official: {n}" for n in report["phases"].get("official", {}).get("official_notes", [])]
    notes += [f"{name}: allocator {res['allocator']}" for name, res in report["phases"].items()
              if res.get("allocator", env.get("allocator")) != env.get("allocator")]
    return "\n".join([title, line(head), line(tuple("-" * w for w in widths))] + [line(r) for r in rows] + notes)
