"""bench/report.md and the plots, from the results bench/compare.py writes."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MiB = 1 << 20
PEERS = ("juicefs", "rclone", "s3fs")
MEDIADRIVE = "mediadrive"
LIMIT = "limit"


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    unit: str
    higher_better: bool
    group: str


@dataclass
class Row:
    tool: str
    values: list[float]
    errors: list[str]

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


def order(tool: str) -> tuple[int, str]:
    """mediadrive's rows first, then the peers, then the limit."""
    rank = 0 if tool.startswith(MEDIADRIVE) else 2 if tool == LIMIT else 1
    return rank, tool


def is_peer(tool: str) -> bool:
    return tool.split("-")[0] in PEERS


def better(metric: Metric, a: float, b: float) -> float:
    """How many times ``a`` is as good as ``b`` (above 1: ``a`` is better)."""
    if metric.higher_better:
        return a / b if b else float("inf")
    return b / a if a else float("inf")


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def rows_of(results: dict[str, Any]) -> dict[str, dict[str, Row]]:
    rows: dict[str, dict[str, Row]] = defaultdict(dict)
    for run in results["runs"]:
        row = rows[run["metric"]].setdefault(run["tool"], Row(run["tool"], [], []))
        if "value" in run:
            row.values.append(float(run["value"]))
        else:
            row.errors.append(str(run["error"]))
    return rows


def best_peer(metric: Metric, rows: dict[str, Row], against: str | None = None) -> Row | None:
    """The best peer; ``against`` a mediadrive variant on PostgreSQL, the peers on the same
    engine (JuiceFS on PostgreSQL, and the peers without one), else those on SQLite."""
    pg = against is not None and against.endswith("-pg")
    peers = [
        r
        for r in rows.values()
        if is_peer(r.tool)
        and r.median is not None
        and (against is None or r.tool.endswith("-pg") == pg or r.tool in ("rclone", "s3fs"))
    ]
    if not peers:
        return None
    pick = max if metric.higher_better else min
    return pick(peers, key=lambda r: r.median or 0.0)


def tool_label(tool: str) -> str:
    names = {
        "mediadrive": "mediadrive (SQLite, fixed 64 MiB chunks)",
        "mediadrive-cdc": "mediadrive (SQLite, CDC chunks)",
        "mediadrive-pg": "mediadrive (PostgreSQL)",
        "mediadrive-fsync": "mediadrive (SQLite, --commit-on fsync)",
        "juicefs": "JuiceFS (SQLite)",
        "juicefs-pg": "JuiceFS (PostgreSQL)",
        "rclone": "rclone mount (vfs-cache-mode full)",
        "s3fs": "s3fs-fuse",
        "limit": "limit",
    }
    return names.get(tool, tool)


LIMITS = {
    "write": "boto3 upload_file, 8 MiB parts, 10 threads",
    "cold_read": "boto3 download_fileobj, 8 MiB parts, 10 threads",
    "cold_cpu": "boto3's download (this Python process), the same bytes",
    "warm_read": "local disk, page cache warm",
    "rand_cold": "local disk, page cache dropped",
    "rand_warm": "local disk, page cache warm",
    "ttfb": "boto3 ranged GET of 1 MiB",
    "edit_time": "boto3 put_object of the 1 MiB patch",
    "edit_sent": "the 1 MiB patch itself",
    "dedup": "ideal: one copy plus the inserted 1 MiB",
    "create": "local disk",
    "stat": "local disk",
    "ls_l": "local disk",
    "delete": "local disk",
    "ls_lr": "local disk, page cache dropped",
    "hydrate": "boto3 get_object, 10 threads",
}


def markdown(results: dict[str, Any]) -> str:
    metrics = [Metric(**m) for m in results["metrics"].values()]
    rows = rows_of(results)
    s = results["settings"]
    m = results["machine"]
    settle_s = results["timing"].get("settle_s")
    settled = "" if settle_s is None else f", waits for a quiet machine {settle_s:.0f} s"
    out: list[str] = ["# mediadrive against JuiceFS, rclone and s3fs", ""]
    out += [
        "Written by `bench/compare.py` (`make bench`"
        + (" QUICK=1" if s["quick"] else "")
        + "); the figures are from one run on the machine below. Tools ran one after "
        "the other within each repetition (their order changing, so that in the data "
        "scenarios each tool takes each place once and follows no other tool more than "
        "twice; each turn starts after a sync, once the CPUs are "
        "80% idle and the disks quiet, or after 5 s), against one MinIO "
        "on loopback, each in its own bucket, with the same data and cache budget. "
        "MB = 10^6 bytes, MiB = 2^20 bytes. Medians of "
        f"{s.get('data_reps') or s['reps']} repetitions in the data scenarios and "
        f"{s['reps']} in the others; the spread is min to max. `vs best peer` and "
        "`vs limit` are how many times as good as that figure (above 1.00: better; "
        "for times and bytes the inverse ratio, so it still reads that way).",
        "",
        "## Machine",
        "",
        f"- cores: {m['cores']} ({m['cpu']}), memory: {m['memory_gib']} GiB, kernel {m['kernel']}",
        f"- work disk (source, fs, size, free): `{m['disk']}`",
        "- load average (1, 5, 15 min): at start "
        + ", ".join(f"{x:.2f}" for x in m["load_start"])
        + ("; at end " + ", ".join(f"{x:.2f}" for x in m["load_end"]) if "load_end" in m else ""),
        "- versions: " + "; ".join(f"{k} {v}" for k, v in results["versions"].items()),
        f"- sizes: file {s['file'] // MiB} MiB, TTFB at {s['ttfb_offset'] // MiB} MiB, "
        f"{s['files']:,} small files, tree of {s['tree_dirs']} folders of "
        f"{s['tree_files_per_dir']} files, near-duplicates of {s['dup'] // MiB} MiB, "
        f"hydrate {s['hydrate_files']} files of {s['hydrate_size'] // MiB} MiB, "
        f"fio {s['fio_seconds']} s per run",
        f"- cache budget for every tool: {s['cache_budget'] // MiB} MiB ("
        + "; ".join(f"{k}: {v}" for k, v in results["cache"].items() if v)
        + ")",
        f"- run time: {results['timing']['total_s'] / 60:.1f} min "
        f"(setup {results['timing']['setup_s']:.0f} s{settled})",
        "",
        "## Summary",
        "",
        "| scenario | mediadrive | best peer | mediadrive vs best peer | limit |",
        "|---|---:|---|---:|---:|",
    ]
    for metric, variant in summary_lines(metrics, rows):
        r = rows.get(metric.key, {})
        md = r.get(variant)
        peer = best_peer(metric, r, variant)
        limit = r.get(LIMIT)
        md_text = cell(md, metric)
        title = metric.title if variant == MEDIADRIVE else f"{metric.title}: {tool_label(variant)}"
        peer_text = (
            f"{tool_label(peer.tool)}: {fmt(peer.median)} {metric.unit}"
            if peer and peer.median is not None
            else "n/a"
        )
        ratio = (
            f"{better(metric, md.median, peer.median):.2f}x"
            if md and md.median is not None and peer and peer.median is not None
            else "n/a"
        )
        out.append(f"| {title} | {md_text} | {peer_text} | {ratio} | {cell(limit, metric)} |")
    out += ["", "## Per scenario", ""]
    for metric in metrics:
        r = rows.get(metric.key, {})
        peer = best_peer(metric, r)
        limit = r.get(LIMIT)
        out += [
            f"### {metric.title}",
            "",
            f"Unit: {metric.unit} ({'higher' if metric.higher_better else 'lower'} is "
            f"better). Limit: {LIMITS.get(metric.key, '-')}.",
            "",
            f"| tool | median ({metric.unit}) | spread | runs | vs best peer | vs limit |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for row in sorted(r.values(), key=lambda x: order(x.tool)):
            med = row.median
            if med is None:
                reason = row.errors[0] if row.errors else "not run"
                out.append(f"| {tool_label(row.tool)} | n/a | | 0 | | {reason} |")
                continue
            spread = f"{fmt(min(row.values))} to {fmt(max(row.values))}"
            vs_peer = (
                f"{better(metric, med, peer.median):.2f}x"
                if peer and peer.median is not None and row.tool != LIMIT
                else ""
            )
            vs_limit = (
                f"{better(metric, med, limit.median):.2f}x"
                if limit and limit.median is not None and row.tool != LIMIT
                else ""
            )
            failed = f" ({len(row.errors)} failed: {row.errors[0]})" if row.errors else ""
            out.append(
                f"| {tool_label(row.tool)} | {fmt(med)} | {spread} | {len(row.values)}"
                f"{failed} | {vs_peer} | {vs_limit} |"
            )
        out.append("")
    out += [f"![figures](compare-{group}.png)" for group in groups(metrics)]
    return "\n".join(out) + "\n"


def summary_lines(
    metrics: list[Metric], rows: dict[str, dict[str, Row]]
) -> list[tuple[Metric, str]]:
    """One summary line per scenario and mediadrive variant measured in it."""
    lines = []
    for metric in metrics:
        variants = sorted(t for t in rows.get(metric.key, {}) if t.startswith(MEDIADRIVE))
        for variant in variants or [MEDIADRIVE]:
            lines.append((metric, variant))
    return lines


def cell(row: Row | None, metric: Metric) -> str:
    if row is None:
        return "n/a (not run)"
    if row.median is None:
        return "n/a (" + (row.errors[0] if row.errors else "no figure") + ")"
    return f"{fmt(row.median)} {metric.unit}"


def groups(metrics: list[Metric]) -> list[str]:
    return list(dict.fromkeys(m.group for m in metrics))


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [Metric(**m) for m in results["metrics"].values()]
    rows = rows_of(results)
    written = []
    for group in groups(metrics):
        chosen = [m for m in metrics if m.group == group]
        cols = 3 if len(chosen) > 2 else len(chosen)
        lines = (len(chosen) + cols - 1) // cols
        fig, axes = plt.subplots(lines, cols, figsize=(5.2 * cols, 3.2 * lines), squeeze=False)
        for ax, metric in zip(axes.flat, chosen, strict=False):
            r = rows.get(metric.key, {})
            tools = sorted(r, key=order)
            medians = [r[t].median or 0.0 for t in tools]
            lows = [
                m - min(r[t].values) if r[t].values else 0.0
                for t, m in zip(tools, medians, strict=True)
            ]
            highs = [
                max(r[t].values) - m if r[t].values else 0.0
                for t, m in zip(tools, medians, strict=True)
            ]
            colours = [
                "tab:blue"
                if t.startswith(MEDIADRIVE)
                else "tab:gray"
                if t == LIMIT
                else "tab:orange"
                for t in tools
            ]
            ax.barh(tools, medians, xerr=[lows, highs], color=colours, capsize=3)
            for y, t in enumerate(tools):
                if r[t].median is None:
                    ax.text(0, y, " n/a", va="center", fontsize=8)
            ax.invert_yaxis()
            shown = [m for m in medians if m > 0]
            if shown and max(shown) / min(shown) > 50:
                # The local disk is often orders of magnitude apart: keep the tools readable.
                ax.set_xscale("log")
            better_word = "higher" if metric.higher_better else "lower"
            scale = ", log scale" if ax.get_xscale() == "log" else ""
            ax.set_title(
                f"{metric.title}\n{metric.unit}, {better_word} is better{scale}", fontsize=8
            )
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(chosen) :]:
            ax.axis("off")
        fig.tight_layout()
        path = out / f"compare-{group}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def write_outputs(results: dict[str, Any], out: Path) -> None:
    (out / "report.md").write_text(markdown(results))
    plot(results, out)
