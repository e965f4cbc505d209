#!/usr/bin/env python3
"""Adds up the results of the k6 processes of one load test (scripts/loadtest.k6.js) and judges
them: delivery latency percentiles read off the merged latency buckets, and every count that
must be zero (lost, duplicated, reordered, errors).

    scripts/k6-merge.py [--p95-ms 150] [--json OUT] SUMMARY.json...

Exits 1 when a threshold fails. A percentile is reported as the bucket that holds it (the
truth is somewhere inside) and as a linear estimate within that bucket; the threshold is
checked against the bucket's upper bound, never the estimate.
"""
import argparse
import json
import sys

ap = argparse.ArgumentParser()
ap.add_argument("summaries", nargs="+")
ap.add_argument("--p95-ms", type=float, default=150.0)
ap.add_argument("--json")
args = ap.parse_args()

counts = {}
buckets = {}
for path in args.summaries:
    with open(path) as f:
        data = json.load(f)
    for name, metric in data["metrics"].items():
        n = metric.get("values", {}).get("count")
        if n is None:
            continue
        if name.startswith("lat_le_"):
            bound = name[len("lat_le_"):]
            key = float("inf") if bound == "inf" else float(bound)
            buckets[key] = buckets.get(key, 0) + n
        else:
            counts[name] = counts.get(name, 0) + n

bounds = sorted(buckets)
total = sum(buckets.values())


def percentile(q):
    """(lower bound, upper bound, linear estimate) of the q-quantile, in ms."""
    if total == 0:
        return (0.0, float("inf"), float("inf"))
    rank = q * total
    seen = 0
    lower = 0.0
    for b in bounds:
        n = buckets[b]
        if seen + n >= rank and n > 0:
            if b == float("inf"):
                return (lower, b, b)
            return (lower, b, lower + (b - lower) * (rank - seen) / n)
        seen += n
        lower = b
    return (lower, float("inf"), float("inf"))


def fmt(ms):
    return "inf" if ms == float("inf") else f"{ms:g}"


result = {"processes": len(args.summaries), "deliveries_timed": total, "counts": counts, "percentiles": {}}
print(f"k6 processes: {len(args.summaries)}")
for name in ["publishes", "acks", "publish_errors", "deliveries", "failed_logins", "failed_connections",
             "late_joins", "protocol_errors", "lost", "duplicated", "reordered", "holes"]:
    print(f"  {name:20} {int(counts.get(name, 0)):>12,}")
for label, q in [("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("p99.9", 0.999)]:
    lo, hi, est = percentile(q)
    result["percentiles"][label] = {"bucket_ms": [lo, hi], "estimate_ms": est}
    print(f"  delivery latency {label:5} ~{est:6.1f} ms  (bucket {fmt(lo)}-{fmt(hi)} ms)")
worst = max((b for b in bounds if buckets[b] > 0), default=0)
print(f"  slowest delivery in bucket up to {fmt(worst)} ms")

failures = []
p95_hi = percentile(0.95)[1]
if not p95_hi < args.p95_ms:
    failures.append(f"p95 bucket bound {fmt(p95_hi)} ms is not below {args.p95_ms:g} ms")
for name in ["lost", "duplicated", "reordered", "protocol_errors", "failed_logins", "failed_connections",
             "publish_errors", "late_joins"]:
    if counts.get(name, 0) > 0:
        failures.append(f"{name} = {int(counts[name])}")
if counts.get("deliveries", 0) == 0:
    failures.append("no delivery at all")
result["failures"] = failures
if args.json:
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
if failures:
    print("FAILED: " + "; ".join(failures))
    sys.exit(1)
print(f"PASSED: p95 below {args.p95_ms:g} ms; nothing lost, duplicated or reordered; no errors")
