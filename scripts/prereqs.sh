#!/usr/bin/env bash
# Installs what Nebula's tests need on Debian when it is missing: redis-server, Debian's
# Chromium and its WebDriver (chromium-driver), and Selenium's Python client (PyPI) for the
# browser test; Prometheus for the metrics test; Docker, a compose tool and debootstrap for the
# compose test. Nothing comes from npm. Fails loudly when it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
# The compose test (tests/compose): Docker, `docker compose` or docker-compose, debootstrap.
command -v docker >/dev/null 2>&1 || need_apt+=(docker.io)
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
# apt_install [apt options] PACKAGE...: as root, or a clear message of what is missing.
apt_install() {
  local opts=() pkgs=()
  for a in "$@"; do case "$a" in -*) opts+=("$a") ;; *) pkgs+=("$a") ;; esac; done
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${pkgs[*]} — install them (apt-get install ${opts[*]} ${pkgs[*]}) or run as root" >&2
    exit 1
  fi
  echo "installing ${pkgs[*]} ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${opts[@]}" "${pkgs[@]}" >/dev/null
}
[ ${#need_apt[@]} -gt 0 ] && apt_install "${need_apt[@]}"
# The metrics test (tests/metrics.rs): a real Prometheus scrapes the server. Without its
# recommends, which would bring node-exporter and its collectors along.
command -v prometheus >/dev/null 2>&1 || apt_install --no-install-recommends prometheus
# A Debian install may start a system redis on 6379; the tests start their own on free ports.
docker info >/dev/null 2>&1 || echo "warning: the Docker daemon is not reachable (docker info); the compose test will fail" >&2

python3 -c 'import yaml' 2>/dev/null || pip install -q pyyaml || { echo "missing: python3 yaml (pip install pyyaml)" >&2; exit 1; }
python3 -c 'import selenium' 2>/dev/null || pip install -q 'selenium>=4.20,<5' \
  || { echo "missing: python3 selenium (pip install selenium) for the browser test" >&2; exit 1; }
# The Protobuf client test builds its client from proto/nebula.proto with protoc (grpcio-tools).
python3 -c 'import grpc_tools, websockets' 2>/dev/null || pip install -q grpcio-tools websockets \
  || { echo "missing: python3 grpcio-tools and websockets (pip install grpcio-tools websockets)" >&2; exit 1; }
