#!/usr/bin/env bash
# Builds every image docker-compose.yml runs offline, on a machine with no container registry and
# no BuildKit, from parts reachable without one:
#   nebula/base:bookworm     Debian bookworm (debootstrap, minbase, trimmed) + `docker import`
#   nebula/redis:TAG         Debian's redis-server      (deploy/redis/Dockerfile)
#   nebula/haproxy:TAG       Debian's haproxy           (deploy/haproxy/Dockerfile)
#   nebula/prometheus:TAG    Debian's prometheus        (deploy/prometheus/Dockerfile)
#   nebula/nebula:TAG        the Dockerfile's runtime stage + a nebula binary built by cargo here
# Each Dockerfile builds unchanged from debian:bookworm-slim where a registry exists; this script
# passes --build-arg BASE=nebula/base:bookworm instead. Grafana has no Debian package and is not
# built: start the services without it (see the README).
#
# Usage: scripts/build-images.sh [--binary PATH] [--tag TAG] [--rebuild]
#   --binary PATH  the nebula binary to put in the image (default target/release/nebula, built
#                  with `cargo build --release --bin nebula` when missing); a stripped copy goes in.
#                  It must run on bookworm's glibc (2.36): build it on Debian 12 or older.
#   --tag TAG      tag of the images (default `local`, the compose file's default; NEBULA_TAG
#                  selects another there)
#   --rebuild      debootstrap the base again even when nebula/base:bookworm exists
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."

base=nebula/base:bookworm
binary=
tag=local
rebuild=0
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --rebuild) rebuild=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

command -v docker >/dev/null || { echo "missing: docker (the Docker CLI)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "missing: a running Docker daemon (docker info fails)" >&2; exit 1; }
command -v strip >/dev/null || { echo "missing: strip (apt-get install binutils)" >&2; exit 1; }

scratch=$(mktemp -d /tmp/nebula-images.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
started=$(date +%s)
step() { echo "== $* ($(($(date +%s) - started)) s)"; }
# Runs a command, showing its output only when it fails (the legacy builder's deprecation notice
# on every build is noise).
quiet() { "$@" > "$scratch/out.log" 2>&1 || { cat "$scratch/out.log" >&2; echo "failed: $*" >&2; exit 1; }; }

# --- The base: Debian bookworm minbase, trimmed like debian:bookworm-slim -------------------------
if [ "$rebuild" = 1 ] || ! docker image inspect "$base" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { echo "missing: debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "debootstrap needs root: run this script as root" >&2; exit 1; }
  step "debootstrap bookworm (minbase) from $mirror"
  root=$scratch/rootfs
  debootstrap --variant=minbase bookworm "$root" "$mirror" > "$scratch/debootstrap.log" 2>&1 \
    || { tail -20 "$scratch/debootstrap.log" >&2; echo "debootstrap failed" >&2; exit 1; }
  # Security and point-release updates for everything installed later.
  rm -f "$root/etc/apt/sources.list"
  cat > "$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # Packages installed in the images stay as lean as the base: no docs (copyrights kept), no
  # man pages, no translations; no daemon started by a postinst; apt keeps no caches.
  cat > "$root/etc/dpkg/dpkg.cfg.d/nebula-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat > "$root/etc/apt/apt.conf.d/nebula-slim" <<'EOF'
APT::Install-Recommends "false";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
Acquire::CompressionTypes::Order:: "gz";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  printf '#!/bin/sh\n# Containers start their own processes: no service is started by a package install.\nexit 101\n' \
    > "$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  rm -rf "$root"/usr/share/{man,info,groff,lintian}/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old "$root"/var/log/* \
    "$root"/var/cache/ldconfig/aux-cache "$root"/tmp/* "$root"/etc/machine-id
  step "import $base ($(du -sh "$root" | cut -f1))"
  tar --numeric-owner -C "$root" -c . \
    | docker import --change 'CMD ["bash"]' --message "debootstrap --variant=minbase bookworm, trimmed" - "$base" >/dev/null
  rm -rf "$root"
else
  step "$base exists (--rebuild makes it again)"
fi

# Builds NAME from CONTEXT (docker build args follow); the image it replaces under that name is
# removed unless a container still uses it, so that rebuilds leave no dangling images behind.
build() {
  local name=$1 ctx=$2 old new
  shift 2
  old=$(docker image inspect -f '{{.Id}}' "$name" 2>/dev/null || true)
  quiet docker build -q -t "$name" "$@" "$ctx"
  new=$(docker image inspect -f '{{.Id}}' "$name")
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
}
for service in redis haproxy prometheus; do
  step "build nebula/$service:$tag"
  build "nebula/$service:$tag" "deploy/$service" --build-arg BASE="$base"
done

# --- Nebula: the runtime stage, then the binary on top -----------------------------------------
if [ -z "$binary" ]; then
  binary=target/release/nebula
  if [ ! -x "$binary" ]; then
    step "cargo build --release --bin nebula"
    cargo build --release --bin nebula
  fi
fi
[ -x "$binary" ] || { echo "not an executable: $binary" >&2; exit 1; }
step "build the nebula runtime stage"
quiet docker build -q --build-arg BASE="$base" --target runtime --iidfile "$scratch/runtime.id" .
mkdir "$scratch/nebula"
cp "$binary" "$scratch/nebula/nebula"
strip "$scratch/nebula/nebula"
cat > "$scratch/nebula/Dockerfile" <<EOF
FROM $(cat "$scratch/runtime.id")
COPY nebula /usr/local/bin/nebula
EOF
step "build nebula/nebula:$tag from $binary (stripped: $(du -h "$scratch/nebula/nebula" | cut -f1))"
build "nebula/nebula:$tag" "$scratch/nebula"

step "done"
docker image ls --format 'table {{.Repository}}:{{.Tag}}\t{{.Size}}' \
  | grep -E "^(IMAGE|REPOSITORY|$base|nebula/(nebula|redis|haproxy|prometheus):$tag)\b"
echo "(every size includes the shared base layer)"
