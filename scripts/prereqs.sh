#!/usr/bin/env bash
# Installs what Nebula's tests need on Debian when it is missing: redis-server, Debian's
# Chromium, and playwright-core (npm) for the browser test; Docker, a compose tool and
# debootstrap for the compose test. Fails loudly when it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# The compose test (tests/compose): Docker, `docker compose` or docker-compose, debootstrap.
command -v docker >/dev/null 2>&1 || need_apt+=(docker.io)
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${need_apt[*]} — install them (apt-get install ${need_apt[*]}) or run as root" >&2
    exit 1
  fi
  echo "installing ${need_apt[*]} ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# A Debian install may start a system redis on 6379; the tests start their own on free ports.
docker info >/dev/null 2>&1 || echo "warning: the Docker daemon is not reachable (docker info); the compose test will fail" >&2

python3 -c 'import yaml' 2>/dev/null || pip install -q pyyaml || { echo "missing: python3 yaml (pip install pyyaml)" >&2; exit 1; }
command -v node >/dev/null 2>&1 || { echo "missing: node (Node.js) for the browser test" >&2; exit 1; }
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "installing playwright-core for the browser test ..."
  npm ci --prefix tests/browser --no-audit --no-fund >/dev/null
fi
