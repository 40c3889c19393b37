#!/usr/bin/env python3
"""Scrapes sessiond's /metrics on every node once a second while a bench runs, then draws the
panels of cluster/grafana/sessiond-dashboard.json (same PromQL meaning, computed here from the
raw samples) into one PNG with matplotlib. Not a Grafana screenshot: a rendering of the same
series from the same metrics.

    scrape:  dashboard_png.py scrape OUT.jsonl http://127.0.0.1:9101 http://127.0.0.1:9102 ...
             (until killed)
    render:  dashboard_png.py render OUT.jsonl docs/dashboard/dashboard.png
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.request
from collections import defaultdict

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse(text: str) -> dict[str, float]:
    """Prometheus text format → {'name{a="b"}': value} with labels sorted."""
    out = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if not m:
            continue
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(LABEL.findall(m.group(2) or "")))
        out[f"{m.group(1)}{{{labels}}}"] = float(m.group(3))
    return out


def scrape(path: str, urls: list[str]) -> None:
    with open(path, "a") as f:
        while True:
            t = time.time()
            for node, url in enumerate(urls, start=1):
                try:
                    text = urllib.request.urlopen(f"{url}/metrics", timeout=2).read().decode()
                except OSError:
                    continue
                f.write(json.dumps({"t": t, "node": node, "m": parse(text)}) + "\n")
            f.flush()
            time.sleep(max(0.0, 1.0 - (time.time() - t)))


def labels_of(key: str) -> dict[str, str]:
    return dict(LABEL.findall(key))


def render(path: str, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(path)]
    t0 = rows[0]["t"]
    by_node = defaultdict(list)
    for r in rows:
        by_node[r["node"]].append(r)

    def series(node, pick):
        pts = by_node[node]
        return [p["t"] - t0 for p in pts], [pick(p["m"]) for p in pts]

    def rate(node, pick, window=5):
        ts, vs = series(node, pick)
        xs, ys = [], []
        for i in range(window, len(ts)):
            dt = ts[i] - ts[i - window]
            xs.append(ts[i])
            ys.append(max(0.0, (vs[i] - vs[i - window]) / dt) if dt > 0 else 0.0)
        return xs, ys

    def total(m, name, **want):
        return sum(v for k, v in m.items() if k.startswith(name + "{")
                   and all(labels_of(k).get(a) == b for a, b in want.items()))

    def quantile(node, q, name, window=5, **want):
        pts = by_node[node]
        xs, ys = [], []
        for i in range(window, len(pts)):
            now, then = pts[i]["m"], pts[i - window]["m"]
            buckets = defaultdict(float)
            for k, v in now.items():
                if k.startswith(name + "_bucket{"):
                    lab = labels_of(k)
                    if all(lab.get(a) == b for a, b in want.items()):
                        buckets[float(lab["le"])] += v - then.get(k, 0.0)
            les = sorted(buckets)
            if not les or buckets[les[-1]] <= 0:
                continue
            target = q * buckets[les[-1]]
            answer = next(le for le in les if buckets[le] >= target)
            xs.append(pts[i]["t"] - t0)
            ys.append(answer * 1000 if answer != float("inf") else None)
        return xs, ys

    nodes = sorted(by_node)
    methods = sorted({labels_of(k)["method"] for r in rows for k in r["m"]
                      if k.startswith("sessiond_rpc_requests_total{")
                      and "SessionAuthority" in k})
    fig, axes = plt.subplots(4, 2, figsize=(16, 17))
    fig.suptitle("sessiond — 3-node cluster under `sessiond bench` (scraped /metrics, rendered with matplotlib)")

    ax = axes[0][0]
    for method in methods:
        xs, ys = None, None
        for node in nodes:
            x, y = rate(node, lambda m, me=method: total(m, "sessiond_rpc_requests_total", method=me))
            if xs is None:
                xs, ys = x, y
            else:
                n = min(len(ys), len(y))
                xs, ys = xs[:n], [a + b for a, b in zip(ys[:n], y[:n])]
        ax.plot(xs, ys, label=method.rsplit("/", 1)[-1])
    ax.set_title("RPC rate by method, all nodes (req/s)")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    for method in methods:
        for node in nodes[:1]:
            xs, ys = quantile(node, 0.99, "sessiond_rpc_duration_seconds", method=method, code="Ok")
            ax.plot(xs, ys, label=f"{method.rsplit('/', 1)[-1]} (node {node})")
    ax.set_title("RPC p99 latency, code Ok (ms, bucket upper bound)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)

    ax = axes[1][0]
    for name in ["last_log", "committed", "applied", "snapshot"]:
        xs, ys = series(1, lambda m, n=name: m.get(f"sessiond_raft_{n}_index{{}}", 0))
        ax.plot(xs, ys, label=f"{name} (node 1)")
    ax.set_title("Raft indexes")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    for node in nodes:
        keys = sorted({k for r in by_node[node] for k in r["m"] if k.startswith("sessiond_raft_replication_lag{")})
        for k in keys:
            xs, ys = series(node, lambda m, k=k: m.get(k, 0))
            ax.plot(xs, ys, label=f"leader {node} → node {labels_of(k)['node_id']}")
    ax.set_title("Replication lag per member (entries, leader's view)")
    ax.legend(fontsize=8)

    ax = axes[2][0]
    for node in nodes:
        xs, s = rate(node, lambda m: m.get("sessiond_commands_per_entry_sum{}", 0))
        _, c = rate(node, lambda m: m.get("sessiond_commands_per_entry_count{}", 0))
        ys = [a / b if b else None for a, b in zip(s, c)]
        if any(ys):
            ax.plot(xs, ys, label=f"node {node}")
    ax.set_title("Commands per log entry (group commit, mean)")
    ax.legend(fontsize=8)

    ax = axes[2][1]
    for node in nodes:
        xs, ys = quantile(node, 0.99, "sessiond_entry_commit_seconds")
        if ys:
            ax.plot(xs, ys, label=f"node {node}")
    ax.set_title("Entry propose → applied p99 (ms)")
    ax.legend(fontsize=8)

    ax = axes[3][0]
    for node in nodes:
        xs, ys = series(node, lambda m: m.get("sessiond_stream_subscribers{}", 0))
        ax.plot(xs, ys, label=f"subscribers node {node}")
    ax.set_title("Revocation stream subscribers")
    ax.legend(fontsize=8)

    ax = axes[3][1]
    for node in nodes:
        xs, ys = series(node, lambda m: m.get("sessiond_storage_bytes{}", 0) / 2**20)
        ax.plot(xs, ys, label=f"data dir node {node}")
    ax.set_title("Storage (MiB)")
    ax.legend(fontsize=8)

    for row in axes:
        for ax in row:
            ax.set_xlabel("seconds")
            ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(png, dpi=80)


if __name__ == "__main__":
    if sys.argv[1] == "scrape":
        scrape(sys.argv[2], sys.argv[3:])
    else:
        render(sys.argv[2], sys.argv[3])
