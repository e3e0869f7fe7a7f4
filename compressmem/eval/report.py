"""The run's report: a markdown summary (accuracy, reads, gate diagnostics, time, memory) and PNG plots."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

METRICS = ("substring", "exact_match", "f1")


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, length, mode): means over the cases that ran, and how many were skipped."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        groups[(record["task"], record["length"], record["mode"])].append(record)
    rows = []
    for (task, length, mode), group in groups.items():
        ran = [r for r in group if not r["skipped"]]
        recalls = [r["evidence_recall"] for r in ran if r.get("evidence_recall") is not None]
        row = {
            "task": task,
            "length": length,
            "mode": mode,
            "cases": len(ran),
            "skipped": len(group) - len(ran),
            "notes": sorted({r["note"] for r in group if r.get("note")}),
        }
        row.update({metric: mean(r[metric] for r in ran) if ran else None for metric in METRICS})
        row["refused"] = mean(r.get("refused", 0.0) for r in ran) if ran else None
        inventions = [r["invented"] for r in ran if r.get("invented") is not None]
        row["invented"] = mean(inventions) if inventions else None
        row["reads"] = mean(len(r["blocks_read"]) for r in ran) if ran and ran[0]["blocks_read"] is not None else None
        row["blocks"] = mean(r["blocks"] for r in ran) if ran and ran[0]["blocks"] is not None else None
        row["evidence_recall"] = mean(recalls) if recalls else None
        row["seconds"] = mean(r["seconds"] for r in ran) if ran else None
        row["peak_mib"] = max(r["peak_mib"] for r in ran) if ran else None
        row["peak_increase_mib"] = max(r["peak_increase_mib"] for r in ran) if ran else None
        rows.append(row)
    return sorted(rows, key=lambda r: (r["task"], r["length"], r["mode"]))


def markdown(rows: list[dict[str, Any]]) -> str:
    """The summary table, with time and peak-memory ratios to MemAgent mode where it ran, and the gate's cost."""
    lines = [
        "| task | length | mode | cases | accuracy | EM | F1 | said not found | invented | blocks read / total "
        "| evidence recall | time (s) | time vs MemAgent | peak MiB (+ over start) | peak increase vs MemAgent |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    baseline = {(r["task"], r["length"]): r for r in rows if r["mode"] == "memagent" and r["cases"]}
    for row in rows:
        if not row["cases"]:
            lines.append(
                f"| {row['task']} | {row['length']} | {row['mode']} | skipped | {'; '.join(row['notes'])} "
                "|  |  |  |  |  |  |  |  |  |  |"
            )
            continue
        base = baseline.get((row["task"], row["length"]))
        lines.append(
            f"| {row['task']} | {row['length']} | {row['mode']} | {row['cases']} | {row['substring']:.1%} | "
            f"{row['exact_match']:.1%} | {row['f1']:.2f} | {row['refused']:.0%} | "
            f"{_percent(row['invented'])} | {_reads(row)} | "
            f"{_percent(row['evidence_recall'])} | "
            f"{row['seconds']:.2f} | {_ratio(row['seconds'], base['seconds'] if base else None)} | "
            f"{row['peak_mib']:.0f} (+{row['peak_increase_mib']:.0f}) | "
            f"{_ratio(row['peak_increase_mib'], base['peak_increase_mib'] if base else None)} |"
        )
    return "\n".join([*lines, "", _gate_costs(rows)]) + "\n"


def _gate_costs(rows: list[dict[str, Any]]) -> str:
    """Default vs the perfect-gate oracle: what gate errors cost in accuracy and what a perfect gate reads."""
    by_key = {(r["task"], r["length"], r["mode"]): r for r in rows if r["cases"]}
    lines = [
        "| task | length | default accuracy | oracle accuracy | cost of gate errors | default evidence recall "
        "| default reads | oracle reads |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (task, length, mode), row in by_key.items():
        oracle = by_key.get((task, length, "oracle"))
        if mode != "default" or oracle is None:
            continue
        lines.append(
            f"| {task} | {length} | {row['substring']:.1%} | {oracle['substring']:.1%} | "
            f"{oracle['substring'] - row['substring']:+.1%} | {_percent(row['evidence_recall'])} | "
            f"{row['reads']:.2f} | {oracle['reads']:.2f} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def plot(rows: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """`accuracy.png` and `time.png`: one panel per task, the metric against length, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    paths = []
    for metric, label, name in (
        ("substring", "accuracy (substring match)", "accuracy.png"),
        ("seconds", "seconds per question", "time.png"),
    ):
        figure, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
        for axis, task in zip(axes[0], tasks):
            for mode in sorted({r["mode"] for r in rows if r["task"] == task}):
                points = sorted(
                    (r["length"], r[metric])
                    for r in rows
                    if r["task"] == task and r["mode"] == mode and r[metric] is not None
                )
                if points:
                    axis.plot(*zip(*points), marker="o", label=mode)
            axis.set_xscale("log", base=2)
            axis.set(title=task, xlabel="context tokens", ylabel=label)
            axis.legend(fontsize="small")
        figure.tight_layout()
        paths.append(Path(out_dir) / name)
        figure.savefig(paths[-1], dpi=120)
        plt.close(figure)
    return paths


def _reads(row: dict[str, Any]) -> str:
    return "n/a" if row["reads"] is None else f"{row['reads']:.2f} / {row['blocks']:.1f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _ratio(value: float | None, base: float | None) -> str:
    return "n/a" if value is None or not base else f"{value / base:.2f}x"
