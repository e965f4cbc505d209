#!/usr/bin/env python3
"""Static checks of docker-compose.yml, the Dockerfiles and the deploy/ configurations.

Quick, without Docker: the compose test (tests/compose) runs the topology for real. Checks that
compose has one scalable `nebula` service (no fixed node id, port or container name; its own
/data per replica; the cookie key from a one-shot service through a volume, never a literal),
Redis with AOF on the back network only, the load balancer and Prometheus finding the replicas
through DNS, Grafana provisioned, two networks; that every image it runs is one that
scripts/build-images.sh builds, from a Dockerfile that also builds from debian:bookworm-slim;
and that every file they reference exists.
"""
import pathlib
import re
import sys

import yaml

root = pathlib.Path(__file__).resolve().parent.parent
errors = []


def check(cond, what):
    if not cond:
        errors.append(what)


def seconds(text):
    m = re.fullmatch(r"(\d+)s", str(text))
    return int(m.group(1)) if m else 0


compose = yaml.safe_load((root / "docker-compose.yml").read_text())
services = compose["services"]
for name in ["secret", "nebula", "redis", "lb", "prometheus", "grafana"]:
    check(name in services, f"compose: service {name} is missing")
if errors:
    print("deploy check failed:\n- " + "\n- ".join(errors))
    sys.exit(1)
networks = compose.get("networks", {})
check(set(networks) == {"back", "front"}, "compose: networks must be back and front")
check((networks.get("back") or {}).get("internal") is True, "compose: the back network must be internal")

# The replicas: one service that scales.
neb = services["nebula"]
env = neb.get("environment", {})
for key in ["container_name", "ports", "hostname"]:
    check(key not in neb, f"compose: nebula must not set {key} (it scales: --scale nebula=3)")
check("NEBULA_NODE_ID" not in env, "compose: nebula must not fix NEBULA_NODE_ID (each replica has its own)")
check("NEBULA_SECRET" not in env, "compose: no cookie key in the compose file (NEBULA_SECRET_FILE)")
check(env.get("NEBULA_REDIS_URL", "").startswith("redis://redis:"), "compose: nebula needs NEBULA_REDIS_URL to the redis service")
secret_file = env.get("NEBULA_SECRET_FILE", "")
check(bool(secret_file), "compose: nebula needs NEBULA_SECRET_FILE (cluster mode requires a key)")
volumes = neb.get("volumes", [])
check("/data" in volumes, "compose: nebula needs an anonymous volume on /data (one per replica)")
secret_mounts = [v for v in volumes if v.startswith("secret:")]
check(
    len(secret_mounts) == 1 and secret_file.startswith(secret_mounts[0].split(":")[1] + "/") and secret_mounts[0].endswith(":ro"),
    "compose: nebula must mount the secret volume read-only where NEBULA_SECRET_FILE points",
)
deps = neb.get("depends_on", {})
check(isinstance(deps, dict) and deps.get("redis", {}).get("condition") == "service_healthy", "compose: nebula must wait for a healthy redis")
check(isinstance(deps, dict) and deps.get("secret", {}).get("condition") == "service_completed_successfully", "compose: nebula must wait for the secret service to complete")
check(sorted(neb.get("networks", [])) == ["back", "front"], "compose: nebula must be on the back and front networks")
drain = int(env.get("NEBULA_SHUTDOWN_TIMEOUT", 10))
check(seconds(neb.get("stop_grace_period")) > drain, f"compose: nebula's stop_grace_period must exceed its {drain} s drain")
check(str(env.get("NEBULA_CONNECT_RATE")) == "0", "compose: the replicas' per-IP limit must be off behind the LB (it applies its own)")

# The one-shot that writes the key, as the nebula user of the same image.
sec = services["secret"]
check(sec.get("image") == neb.get("image"), "compose: secret must run the nebula image (same uid as the replicas)")
check("entrypoint" in sec and "/dev/urandom" in " ".join(sec["entrypoint"]), "compose: secret must generate the key from /dev/urandom")
check(any(v.startswith("secret:") and not v.endswith(":ro") for v in sec.get("volumes", [])), "compose: secret must write the secret volume")
check(sec.get("restart") == "no", "compose: secret is a one-shot (restart: \"no\")")
check("secret" in compose.get("volumes", {}), "compose: the secret volume must be declared")

redis = services["redis"]
redis_cmd = " ".join(redis["command"])
check("--appendonly yes" in redis_cmd and "--appendfsync always" in redis_cmd, "compose: redis must run with AOF, appendfsync always")
check(redis.get("networks") == ["back"], "compose: redis must be on the back network only")
check(any(v.endswith(":/data") for v in redis.get("volumes", [])), "compose: redis needs a volume on /data")

lb = services["lb"]
check(lb.get("networks") == ["front"], "compose: lb must be on the front network only")
check(any(p.endswith(":8080") and "${NEBULA_HTTP_PORT:-8080}" in p for p in lb.get("ports", [])), "compose: lb must publish ${NEBULA_HTTP_PORT:-8080}:8080")
check("nebula" not in (lb.get("depends_on") or []), "compose: lb must not depend on nebula (stopped first, it would cut the drain)")
prom = services["prometheus"]
check(prom.get("networks") == ["front"], "compose: prometheus must be on the front network only")
check(any("${NEBULA_PROMETHEUS_PORT:-9090}" in p for p in prom.get("ports", [])), "compose: prometheus must publish ${NEBULA_PROMETHEUS_PORT:-9090}")
graf = services["grafana"]
check("front" in graf.get("networks", []), "compose: grafana must be on the front network (it reads Prometheus)")
for vol in graf.get("volumes", []):
    src = vol.split(":")[0]
    check((root / src).exists(), f"compose: {src} does not exist")

# Images: what build-images.sh builds, from Dockerfiles that build anywhere.
script = (root / "scripts/build-images.sh").read_text()
loop = re.search(r"^for service in ([a-z ]+); do", script, re.M)
offline = set(loop.group(1).split()) if loop else set()
check("nebula/nebula:$tag" in script, "build-images.sh: must build nebula/nebula:$tag")
for name, svc in services.items():
    image = svc.get("image", "")
    if name == "grafana":
        check(image.startswith("grafana/grafana:"), "compose: grafana runs the official image")
        continue
    m = re.fullmatch(r"nebula/([a-z]+):\$\{NEBULA_TAG:-local\}", image)
    check(bool(m), f"compose: {name} must run nebula/<name>:${{NEBULA_TAG:-local}}, not {image!r}")
    if not m:
        continue
    check(m.group(1) == "nebula" or m.group(1) in offline, f"build-images.sh does not build {image}")
    ctx = svc.get("build")
    check(isinstance(ctx, str) and (root / ctx / "Dockerfile").exists(), f"compose: {name} needs a build context with a Dockerfile")
    if isinstance(ctx, str) and ctx != "." and (root / ctx / "Dockerfile").exists():
        text = (root / ctx / "Dockerfile").read_text()
        check("ARG BASE=debian:bookworm-slim" in text and "FROM ${BASE}" in text, f"{ctx}/Dockerfile: ARG BASE=debian:bookworm-slim + FROM ${{BASE}}")
        for copied in re.findall(r"^COPY (\S+)", text, re.M):
            check((root / ctx / copied).exists(), f"{ctx}/Dockerfile: COPY {copied} does not exist")

docker = (root / "Dockerfile").read_text()
froms = re.findall(r"^FROM (.+)$", docker, re.M)
check(bool(froms) and froms[0] == "${BASE} AS runtime", "Dockerfile: the first stage must be `FROM ${BASE} AS runtime` (offline: --target runtime)")
check("ARG BASE=debian:bookworm-slim" in docker, "Dockerfile: ARG BASE=debian:bookworm-slim")
check(any(f.startswith("rust:") and f.endswith(" AS build") for f in froms), "Dockerfile: a rust build stage")
check(bool(froms) and froms[-1] == "runtime", "Dockerfile: the final stage must be FROM runtime")
check("cargo build --release --locked --bin nebula" in docker, "Dockerfile: must build the nebula binary")
check("COPY --from=build /src/target/release/nebula /usr/local/bin/nebula" in docker, "Dockerfile: the final stage copies the binary")
check('ENTRYPOINT ["/usr/local/bin/nebula"]' in docker, "Dockerfile: must run nebula")
check("NEBULA_LISTEN=0.0.0.0:8080" in docker and "NEBULA_DATA_DIR=/data" in docker, "Dockerfile: listen on all interfaces, data in /data")
check("HEALTHCHECK" in docker and "/readyz" in docker, "Dockerfile: a healthcheck on /readyz")
check("STOPSIGNAL SIGTERM" in docker, "Dockerfile: STOPSIGNAL SIGTERM (the graceful drain)")
ignore = (root / ".dockerignore").read_text().split()
for copied in ["Cargo.toml", "Cargo.lock", "build.rs", "proto", "src", "static", "benches"]:
    check((root / copied).exists(), f"Dockerfile: COPY {copied} does not exist")
    check(f"!{copied}" in ignore, f".dockerignore: {copied} must be sent to the build")

haproxy = (root / "deploy/haproxy/haproxy.cfg").read_text()
for needle in ["nameserver dns 127.0.0.11:53", "server-template nebula", "option httpchk GET /readyz", "timeout tunnel"]:
    check(needle in haproxy, f"haproxy.cfg: {needle!r} is missing")
check("http-request set-header Host" not in haproxy, "haproxy.cfg: Host must pass unchanged (the Origin check)")
promcfg = yaml.safe_load((root / "deploy/prometheus/prometheus.yml").read_text())
jobs = {j["job_name"]: j for j in promcfg["scrape_configs"]}
sd = (jobs.get("nebula") or {}).get("dns_sd_configs") or [{}]
check(sd[0].get("names") == ["nebula"] and sd[0].get("type") == "A" and sd[0].get("port") == 8080, "prometheus: the nebula job must find the replicas by DNS (type A, port 8080)")
check("static_configs" not in (jobs.get("nebula") or {}), "prometheus: no static list of replicas")

if errors:
    print("deploy check failed:\n- " + "\n- ".join(errors))
    sys.exit(1)
print("deploy check: docker-compose.yml, the Dockerfiles and deploy/ are consistent")
