#!/usr/bin/env python3
"""The median and range of each cluster figure per build, from the lines scripts/bench-ab.sh
collects (scripts/bench-cluster.sh's output, each line prefixed with the build and the round).

    scripts/bench-summary.py OUT...

seed p50/p95/p99: every delivery of the seed scenario; cross p50/p95/p99: cross-node
deliveries of the two-node command; cross ack p50/p95/p99: the publishers' acks in that
command (files from the third measurement on); redis/node1 cpu: seconds per cross-node run; aof and
node1 disk: bytes per message of a cross-node run (an AOF rewrite shows as a larger growth in
the run it falls in and a negative one in the next)."""
import collections
import re
import statistics
import sys

LAT = r"p50 ([\d.]+) ms  p95 ([\d.]+) ms  p99 ([\d.]+)"
figures = collections.defaultdict(lambda: collections.defaultdict(list))
for path in sys.argv[1:]:
    for line in open(path):
        if m := re.match(r"(\S+) r\d+ cross\d+ cross-node deliveries \d+: " + LAT, line):
            for k, v in zip(("cross p50", "cross p95", "cross p99"), m.groups()[1:]):
                figures[m[1]][k].append(float(v))
        elif m := re.match(r"(\S+) r\d+ cross\d+ ack latency " + LAT, line):
            for k, v in zip(("cross ack p50", "cross ack p95", "cross ack p99"), m.groups()[1:]):
                figures[m[1]][k].append(float(v))
        elif m := re.match(r"(\S+) r\d+ seed\d+ delivery latency " + LAT, line):
            for k, v in zip(("seed p50", "seed p95", "seed p99"), m.groups()[1:]):
                figures[m[1]][k].append(float(v))
        elif m := re.match(r"(\S+) r\d+ cross\d+ redis cpu ([\d.]+) s, node1 cpu ([\d.]+) s, "
                           r"aof \+(-?\d+) bytes(?:, node1 disk \+(\d+) bytes)?", line):
            f = figures[m[1]]
            f["redis cpu s"].append(float(m[2]))
            f["node1 cpu s"].append(float(m[3]))
            f["aof B/msg"].append(int(m[4]) / 20000)
            if m[5]:
                f["node1 disk B/msg"].append(int(m[5]) / 20000)
if not figures:
    sys.exit("no figures in " + " ".join(sys.argv[1:]))
for build, kv in figures.items():
    print(build)
    for k, v in kv.items():
        print(f"  {k:17} median {statistics.median(v):9.2f}   range {min(v):.2f}-{max(v):.2f}   runs {len(v)}")
