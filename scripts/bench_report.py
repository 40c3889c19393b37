#!/usr/bin/env python3
"""Turns `sessiond bench --json` reports into the comparison table and chart.

Subcommands:
  summary FILE      one line per operation of one report
  machine DIR       JSON describing this machine, with fsync latency measured in DIR
  table RESULTS     markdown table of every report in RESULTS (with the targets checked)
  chart RESULTS     RESULTS/chart.png: throughput and p99 per workload and store (matplotlib)
"""
import glob
import json
import os
import platform
import statistics
import sys
import time

# The row shown for each workload file: (file suffix, label, operation whose latency is shown).
WORKLOADS = [
    ("create", "create", "create"),
    ("rotate", "rotate", "rotate"),
    ("lookup-linearizable", "lookup (linearizable)", "lookup"),
    ("lookup-local", "lookup (local / serializable)", "lookup"),
    ("mixed", "mixed 70/25/5 (latency: rotate)", "rotate"),
    ("revoke-fanout", "revoke → event at subscribers", "revoke_to_event"),
]
TARGETS = ["sessiond", "sessiond-lease", "sessiond-single", "etcd", "redis-always", "redis-everysec"]


def load(path):
    with open(path) as f:
        return json.load(f)


def op_row(report, op):
    return next((row for row in report["ops"] if row["op"] == op), None)


def summary(path):
    report = load(path)
    for row in report["ops"]:
        print(f"  {row['op']:<16} {row['ops_per_sec']:>10.0f} ops/s  p50 {row['p50_ms']:.3f} ms"
              f"  p99 {row['p99_ms']:.3f} ms  p99.9 {row['p999_ms']:.3f} ms")
    for kind, count in report["errors"].items():
        print(f"  error {kind}: {count}")


def fsync_latency_ms(directory, rounds=200):
    path = os.path.join(directory, "fsync-probe")
    samples = []
    with open(path, "wb") as f:
        for _ in range(rounds):
            f.write(b"x" * 4096)
            started = time.perf_counter()
            f.flush()
            os.fsync(f.fileno())
            samples.append((time.perf_counter() - started) * 1000)
    os.remove(path)
    samples.sort()
    return {"p50": samples[len(samples) // 2], "p99": samples[int(len(samples) * 0.99)],
            "mean": statistics.mean(samples)}


def machine(directory):
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        mem_kb = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
    print(json.dumps({
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "fsync_4k_ms": fsync_latency_ms(directory),
    }, indent=2))


def reports(results):
    found = {}
    for path in glob.glob(os.path.join(results, "*.json")):
        name = os.path.basename(path)[:-5]
        for target in TARGETS:
            if name.startswith(target + "-"):
                found[(target, name[len(target) + 1:])] = load(path)
    return found


def ratio(a, b):
    return a / b if b else float("inf")


def checks(found):
    """Issue 14's targets, each as (description, measured, met)."""
    out = []

    def ops(target, workload, op):
        report = found.get((target, workload))
        return op_row(report, op) if report else None

    for workload, factor in [("create", 2.0), ("rotate", 3.0)]:
        s, e = ops("sessiond", workload, workload), ops("etcd", workload, workload)
        if s and e:
            r = ratio(s["ops_per_sec"], e["ops_per_sec"])
            out.append((f"{workload} ≥ {factor:g}× etcd", f"{r:.2f}×", r >= factor))
            out.append((f"{workload} p99 ≤ etcd's", f"{s['p99_ms']:.2f} ms vs {e['p99_ms']:.2f} ms",
                        s["p99_ms"] <= e["p99_ms"]))
    for workload, factor, what in [("lookup-linearizable", 4.0, "linearizable get"),
                                   ("lookup-local", 6.0, "serializable get")]:
        s, e = ops("sessiond", workload, "lookup"), ops("etcd", workload, "lookup")
        if s and e:
            r = ratio(s["ops_per_sec"], e["ops_per_sec"])
            out.append((f"{workload} ≥ {factor:g}× etcd {what}", f"{r:.2f}×", r >= factor))
    s, e = ops("sessiond-lease", "lookup-linearizable", "lookup"), ops("etcd", "lookup-linearizable", "lookup")
    if s and e:
        r = ratio(s["ops_per_sec"], e["ops_per_sec"])
        out.append(("lookup-linearizable with lease reads (opt-in) ≥ 4× etcd linearizable get",
                    f"{r:.2f}×", r >= 4.0))
        a, b = found[("sessiond-lease", "lookup-linearizable")], found[("etcd", "lookup-linearizable")]
        if a.get("server_cpu_us_per_op") and b.get("server_cpu_us_per_op"):
            a, b = a["server_cpu_us_per_op"], b["server_cpu_us_per_op"]
            out.append(("lookup-linearizable with lease reads: server CPU/op ≤ ½ etcd's",
                        f"{a:.0f} µs vs {b:.0f} µs", a <= b / 2))
    for suffix, _, _ in WORKLOADS:
        s, e = found.get(("sessiond", suffix)), found.get(("etcd", suffix))
        if s and e and s.get("server_cpu_us_per_op") and e.get("server_cpu_us_per_op"):
            a, b = s["server_cpu_us_per_op"], e["server_cpu_us_per_op"]
            out.append((f"{suffix}: server CPU/op ≤ ½ etcd's", f"{a:.0f} µs vs {b:.0f} µs", a <= b / 2))
    s, r = ops("sessiond-single", "rotate", "rotate"), ops("redis-always", "rotate", "rotate")
    if s and r:
        share = ratio(s["ops_per_sec"], r["ops_per_sec"])
        out.append(("single-node rotate ≥ 35% of redis-always", f"{share:.0%}", share >= 0.35))
    for suffix, _, op in WORKLOADS:
        row = ops("sessiond", suffix, op)
        if row and suffix != "revoke-fanout":
            out.append((f"{suffix}: p99.9 ≤ 3× p99", f"{row['p999_ms']:.2f} / {row['p99_ms']:.2f} ms",
                        row["p999_ms"] <= 3 * row["p99_ms"]))
    f = ops("sessiond", "revoke-fanout", "revoke_to_event")
    if f:
        report = found[("sessiond", "revoke-fanout")]
        asked = report.get("rate") or 0
        reached = op_row(report, "revoke")["ops_per_sec"]
        out.append((f"revoke → event p99 ≤ 5 ms ({report['subscribers']} subscribers)",
                    f"{f['p99_ms']:.2f} ms", f["p99_ms"] <= 5.0))
        out.append(("revocation rate asked is reached", f"{reached:.0f} of {asked:.0f}/s",
                    reached >= 0.98 * asked))
    return out


def table(results):
    found = reports(results)
    try:
        info = load(os.path.join(results, "machine.json"))
        fs = info["fsync_4k_ms"]
        print(f"Machine: {info['cpus']} cores ({info['cpu_model']}), {info['memory_gib']} GiB, "
              f"kernel {info['kernel']}, fsync of 4 KiB p50 {fs['p50']:.2f} ms / p99 {fs['p99']:.2f} ms.\n")
    except OSError:
        pass
    any_report = next(iter(found.values()), None)
    if any_report:
        print(f"Concurrency {any_report['concurrency']} clients (revoke-fanout: see its row), "
              f"closed loop, all servers on loopback; latencies in ms.\n")
    print("| workload | store | ops/s | p50 | p90 | p99 | p99.9 | server CPU µs/op | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for suffix, label, op in WORKLOADS:
        for target in TARGETS:
            report = found.get((target, suffix))
            if not report:
                continue
            row = op_row(report, op)
            if not row:
                continue
            throughput = report["total_ops_per_sec"] if suffix == "mixed" else row["ops_per_sec"]
            errors = sum(report["errors"].values())
            extra = ""
            if suffix == "revoke-fanout":
                rate = f" at {report['rate']:.0f}/s" if report.get("rate") else ""
                extra = f" ({report['subscribers']} subscribers, {report['concurrency']} revokers{rate})"
                throughput = op_row(report, "revoke")["ops_per_sec"]
            cpu = report.get("server_cpu_us_per_op")
            cpu = f"{cpu:,.0f}" if cpu is not None else "–"
            print(f"| {label}{extra} | {target} | {throughput:,.0f} | {row['p50_ms']:.2f} | "
                  f"{row['p90_ms']:.2f} | {row['p99_ms']:.2f} | {row['p999_ms']:.2f} | {cpu} | {errors} |")
    found_checks = checks(found)
    if found_checks:
        print("\n| target | measured | met |")
        print("|---|---|---|")
        for description, measured, met in found_checks:
            print(f"| {description} | {measured} | {'yes' if met else '**no**'} |")


def chart(results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = reports(results)
    rows = [(suffix, label, op) for suffix, label, op in WORKLOADS
            if suffix != "revoke-fanout" and any((t, suffix) in found for t in TARGETS)]
    targets = [t for t in TARGETS if any((t, s) in found for s, _, _ in rows)]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8))
    width = 0.8 / max(len(targets), 1)
    for i, target in enumerate(targets):
        xs, throughput, p99 = [], [], []
        for j, (suffix, _, op) in enumerate(rows):
            report = found.get((target, suffix))
            row = op_row(report, op) if report else None
            if row:
                xs.append(j + i * width)
                throughput.append(report["total_ops_per_sec"] if suffix == "mixed" else row["ops_per_sec"])
                p99.append(row["p99_ms"])
        top.bar(xs, throughput, width, label=target)
        bottom.bar(xs, p99, width, label=target)
    ticks = [j + width * (len(targets) - 1) / 2 for j in range(len(rows))]
    top.set_yscale("log")
    for axis, title in [(top, "throughput (ops/s, log scale, higher is better)"),
                        (bottom, "p99 latency (ms, lower is better)")]:
        axis.set_xticks(ticks)
        axis.set_xticklabels([label for _, label, _ in rows], fontsize=8)
        axis.set_title(title)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(results, "chart.png"), dpi=110)


if __name__ == "__main__":
    commands = {"summary": summary, "machine": machine, "table": table, "chart": chart}
    if len(sys.argv) != 3 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](sys.argv[2])
