#!/usr/bin/python3
"""Performance plots from bench_sweep's Google Benchmark JSON.

    scripts/plot_performance.py --run build/bin/bench_sweep   # run the sweep, then plot
    scripts/plot_performance.py sweep.json                    # plot a saved run
        [--out docs/img] [--save-json sweep.json]

Draws docs/img/gather_vs_tokens.png (gather throughput vs tokens per batch: ours and the probe,
f32 and bf16, and the bf16 gather forced through the generic loop), gather_vs_table_size.png
(f32 gather vs table rows) and hash_vs_tokens.png (hashing vs batch size), and prints the
numbers as Markdown tables on stdout. Every point is the best (highest tokens/s) of the
benchmark's repetitions. Needs matplotlib (Debian: apt-get install python3-matplotlib; use
/usr/bin/python3, which sees Debian's packages).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile


def run_sweep(binary, json_path):
    """Runs the sweep binary, writing Google Benchmark's JSON to json_path."""
    cmd = [binary, "--benchmark_out=" + json_path, "--benchmark_out_format=json"]
    print("running: " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def best_rates(doc):
    """{series: {x: best items_per_second}} from the iteration runs (not the aggregates)."""
    series = {}
    for b in doc.get("benchmarks", []):
        if b.get("run_type") != "iteration" or b.get("error_occurred"):
            continue
        rate = b.get("items_per_second")
        if rate is None:
            continue
        m = re.match(r"^(sweep/[^/]+)/(tokens|rows):(\d+)", b.get("run_name", b["name"]))
        if not m:
            continue
        name, x = m.group(1), int(m.group(3))
        per = series.setdefault(name, {})
        per[x] = max(per.get(x, 0.0), float(rate))
    return series


def fmt_count(n):
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return "%dM" % (n >> 20)
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return "%dK" % (n >> 10)
    return str(n)


def markdown_table(title, xlabel, columns, series):
    """A Markdown table: one row per x, one column per series present (Mtok/s)."""
    present = [(label, key) for label, key in columns if key in series]
    if not present:
        return ""
    xs = sorted(set().union(*(series[key].keys() for _, key in present)))
    lines = ["**%s** (Mtok/s, best of the repetitions)" % title, "",
             "| " + xlabel + " | " + " | ".join(label for label, _ in present) + " |",
             "| --- |" + " --- |" * len(present)]
    for x in xs:
        cells = []
        for _, key in present:
            v = series[key].get(x)
            cells.append("%.3f" % (v / 1e6) if v is not None else "")
        lines.append("| " + fmt_count(x) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(series, columns, xlabel, title, path, note=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles = ["o-", "s--", "^-", "v--", "D-", "x:"]
    drawn = 0
    for i, (label, key) in enumerate(columns):
        if key not in series:
            continue
        xs = sorted(series[key])
        ax.plot(xs, [series[key][x] / 1e6 for x in xs], styles[i % len(styles)], label=label, markersize=4)
        drawn += 1
    if drawn == 0:
        plt.close(fig)
        return False
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Mtok/s (16 rows per token)" if "hash" not in path else "Mtok/s")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, alpha=0.7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="?", help="bench_sweep JSON (--benchmark_out=FILE --benchmark_out_format=json)")
    ap.add_argument("--run", metavar="BINARY", help="run this bench_sweep binary first")
    ap.add_argument("--save-json", metavar="FILE", help="with --run: keep the JSON here")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "img"),
                    help="directory for the PNGs (default: docs/img)")
    args = ap.parse_args()
    if not args.json and not args.run:
        ap.error("give a JSON file or --run BINARY")

    if args.run:
        path = args.save_json or tempfile.mkstemp(prefix="engram_sweep_", suffix=".json")[1]
        run_sweep(args.run, path)
    else:
        path = args.json
    with open(path) as f:
        doc = json.load(f)
    if args.run and not args.save_json:
        os.unlink(path)

    series = best_rates(doc)
    if not series:
        print("no sweep/* results with items_per_second in %s" % path, file=sys.stderr)
        return 1
    ctx = doc.get("context", {})
    note = "%s, %s CPUs, load avg %s; %s" % (
        ctx.get("host_name", "?"), ctx.get("num_cpus", "?"),
        ", ".join("%.1f" % v for v in ctx.get("load_avg", [])) or "?", ctx.get("date", ""))

    os.makedirs(args.out, exist_ok=True)
    token_cols = [("ours f32", "sweep/gather_f32"), ("probe f32", "sweep/gather_f32_probe"),
                  ("ours bf16 -> f32", "sweep/gather_bf16"), ("probe bf16 (bf16 bytes)", "sweep/gather_bf16_probe"),
                  ("bf16, generic loop (no AVX-512)", "sweep/gather_bf16_generic")]
    table_cols = [("ours f32", "sweep/table_f32"), ("probe f32", "sweep/table_f32_probe")]
    hash_cols = [("reference hash, 16 heads", "sweep/hash")]

    made = []
    if plot(series, token_cols, "tokens per batch",
            "gather vs batch size (10,344,164 x 64 table)", os.path.join(args.out, "gather_vs_tokens.png"), note):
        made.append("gather_vs_tokens.png")
    if plot(series, table_cols, "table rows (x 64 f32 = 256 B each)", "gather vs table size (4,096 tokens per batch)",
            os.path.join(args.out, "gather_vs_table_size.png"), note):
        made.append("gather_vs_table_size.png")
    if plot(series, hash_cols, "tokens per batch (batch 1 x T)", "hashing vs batch size (default layer)",
            os.path.join(args.out, "hash_vs_tokens.png"), note):
        made.append("hash_vs_tokens.png")

    print("Measured: " + note + "\n")
    print(markdown_table("gather vs tokens per batch", "tokens", token_cols, series))
    print(markdown_table("gather vs table size (4,096 tokens per batch)", "rows", table_cols, series))
    print(markdown_table("hashing vs batch size", "tokens", hash_cols, series))
    print("wrote: " + ", ".join(os.path.join(args.out, m) for m in made), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
