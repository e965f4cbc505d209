#!/usr/bin/env python3
"""Static checks of the Dockerfile and docker-compose.yml (no Docker engine here).

Checks that compose has Redis (AOF), three Nebula nodes with distinct ids, ports and volumes, the
cluster's required environment, Prometheus scraping every node, Grafana provisioned, and that
every file they reference exists; and that the Dockerfile builds and runs the `nebula` binary.
"""
import pathlib
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent.parent
errors = []


def check(cond, what):
    if not cond:
        errors.append(what)


compose = yaml.safe_load((root / "docker-compose.yml").read_text())
services = compose["services"]
for name in ["redis", "node1", "node2", "node3", "prometheus", "grafana"]:
    check(name in services, f"compose: service {name} is missing")
redis_cmd = " ".join(services["redis"]["command"])
check("--appendonly yes" in redis_cmd and "--appendfsync always" in redis_cmd, "compose: redis must run with AOF, appendfsync always")
ids, ports = set(), set()
for n in ["node1", "node2", "node3"]:
    s = services[n]
    env = s["environment"]
    check(s.get("build") == ".", f"compose: {n} must build from the Dockerfile")
    check(env.get("NEBULA_REDIS_URL", "").startswith("redis://redis:"), f"compose: {n} needs NEBULA_REDIS_URL to the redis service")
    check(bool(env.get("NEBULA_SECRET")), f"compose: {n} needs NEBULA_SECRET (cluster mode requires it)")
    ids.add(env.get("NEBULA_NODE_ID"))
    ports.update(p.split(":")[0] for p in s["ports"])
    check(any(v.endswith(":/data") for v in s["volumes"]), f"compose: {n} needs a volume on /data")
    check("redis" in s["depends_on"], f"compose: {n} must depend on redis")
check(len(ids) == 3 and None not in ids, "compose: node ids must be set and distinct")
check(len(ports) == 3, "compose: node ports must be distinct")
for vol in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
    src = vol.split(":")[0]
    check((root / src).exists(), f"compose: {src} does not exist")
prom = yaml.safe_load((root / "deploy/prometheus.yml").read_text())
targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
check(sorted(targets) == ["node1:8080", "node2:8080", "node3:8080"], "prometheus: must scrape the three nodes")

docker = (root / "Dockerfile").read_text()
check("cargo build --release --bin nebula" in docker, "Dockerfile: must build the nebula binary")
check('ENTRYPOINT ["/usr/local/bin/nebula"]' in docker, "Dockerfile: must run nebula")
check("NEBULA_LISTEN=0.0.0.0:8080" in docker, "Dockerfile: must listen on all interfaces in the container")
for copied in ["Cargo.toml", "Cargo.lock", "src", "static", "benches"]:
    check((root / copied).exists(), f"Dockerfile: COPY {copied} does not exist")

if errors:
    print("deploy check failed:\n- " + "\n- ".join(errors))
    sys.exit(1)
print("deploy check: Dockerfile and docker-compose.yml are consistent")
