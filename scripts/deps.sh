#!/usr/bin/env bash
# Install the Debian packages rampart's stack, tests and benchmarks need, only when missing.
# Idempotent; safe to run on every start. Needs root (or sudo) the first time.
set -euo pipefail

want=(
  postgresql-15        # the database engine under rampart db
  postgresql-contrib
  etcd-server          # the coordination store (leader lease, discovery)
  etcd-client
  haproxy              # benchmark anchor; the db agents behind HAProxy with Patroni's config (test)
  keepalived           # VRRP interoperability test and failover benchmark anchor
  nginx-light          # benchmark anchor and test backend
  wrk                  # load generator
  nghttp2-client       # h2load: fixed-rate load (bench/lb-scale --rate)
  protobuf-compiler    # etcd-client's build needs protoc ...
  libprotobuf-dev      # ... and its include files (only a Recommends of protobuf-compiler)
  gcc                  # a C compiler and linker: ring and build scripts (absent from minimal Debian)
  libc6-dev            # crt files and libc headers the linker needs
  pkg-config
  nftables             # firewall rulesets and partition tests
  iproute2             # network namespaces
  curl
  ca-certificates
  openssl              # the CLI: rampart up makes the stack's CA and certificates with it
  procps               # ps, pkill: test clean-up checks and scripts
  chromium             # headless: the lb stats page and the monitor dashboard tests render them
  testssl.sh           # scripts/testssl-lb.sh: the HTTPS listener's configuration quality
  prometheus           # promtool and a real Prometheus: the monitor's export and /metrics formats (test)
  prometheus-alertmanager  # a real Alertmanager receiving the monitor's alerts (test)
  pebble               # ACME test server (and pebble-challtestsrv, its DNS): lb ACME tests
)

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "rampart: installing missing packages: ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts packaged daemons on install where an init system runs; rampart runs its own.
for svc in nginx haproxy etcd postgresql keepalived prometheus prometheus-alertmanager; do
  $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
