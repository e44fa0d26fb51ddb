#!/usr/bin/env bash
# Proves the README's quick start on a fresh Debian 12: makes a minimal Debian root with
# mmdebstrap (Debian's own packages, nothing of this machine's), brings in only the rustup
# toolchain (bind-mounted, read-only), copies the committed tree (git archive HEAD), and runs
# the README's two commands inside it:
#   1. bash scripts/up.sh    until the stack reports healthy, then `rampart status`, then Ctrl-C
#   2. bash scripts/test.sh  (CI=true, no input), the whole test suite
# and reports how long each took and how each ended. A package that this machine has but that
# nothing installs makes one of them fail here.
#
#   bash scripts/fresh-check.sh [--up-only] [--keep] [--root DIR]
#
# Needs root (mount, chroot) and the network to Debian's and crates.io's registries.
# Everything it mounts or starts is removed when it ends, also on Ctrl-C or failure
# (--keep keeps the root folder, unmounted, for a look).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

up_only=0 keep=0 root=""
while [ $# -gt 0 ]; do
  case "$1" in
    --up-only) up_only=1 ;;
    --keep) keep=1 ;;
    --root) root=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "fresh-check: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" -eq 0 ] || { echo "fresh-check: needs root (mmdebstrap, mount, chroot)" >&2; exit 2; }
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
[ -x "$cargo_bin/cargo" ] || { echo "fresh-check: no rustup toolchain at $cargo_bin" >&2; exit 2; }
root=${root:-/var/tmp/rampart-fresh.$$}
log_dir=$(mktemp -d /tmp/rampart-fresh-logs.XXXXXX)

say() { printf '[fresh-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

if ! command -v mmdebstrap >/dev/null 2>&1; then
  say "installing mmdebstrap"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

# Every process whose root is the fresh root: what the chroot started, however it forked.
inside_pids() {
  local p r
  for p in /proc/[0-9]*; do
    r=$(readlink "$p/root" 2>/dev/null) || continue
    [ "$r" = "$root" ] && echo "${p#/proc/}"
  done
  return 0
}

cleanup() {
  local pids
  pids=$(inside_pids)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    sleep 2
    pids=$(inside_pids)
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  fi
  # Network namespaces made inside the root live under its /run/netns.
  if [ -d "$root/run/netns" ]; then
    for ns in "$root"/run/netns/*; do
      [ -e "$ns" ] && umount "$ns" 2>/dev/null || true
    done
  fi
  for m in $(awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  if [ "$keep" -eq 1 ]; then
    say "kept $root (logs in $log_dir)"
  else
    rm -rf --one-file-system "$root"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s)
say "making a fresh Debian 12 root in $root (mmdebstrap --variant=minbase)"
mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$root" \
  "deb http://deb.debian.org/debian bookworm main" \
  "deb http://deb.debian.org/debian bookworm-updates main" \
  "deb http://deb.debian.org/debian-security bookworm-security main" >"$log_dir/mmdebstrap.log" 2>&1 \
  || { tail -20 "$log_dir/mmdebstrap.log"; exit 1; }
t_root=$(($(date +%s) - t0))
say "root made in ${t_root}s"

# What a freshly booted machine has mounted; nothing of this machine's files. The root
# itself is a mount point, as / is on a machine (`ip netns exec` remounts / as a slave).
mount --bind "$root" "$root"
mount --make-private "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
if grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts; then
  mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
fi
mount --rbind /dev "$root/dev"
mount --make-rslave "$root/dev"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# This workplace reaches the registries through a TLS proxy with its own CA: the network's
# trust, not a package, so it comes in (a user's machine on the open internet needs none).
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null 2>&1
fi
# Only the toolchain comes from this machine: rustup's toolchains and the cargo/rustc shims.
mkdir -p "$root/root/.rustup" "$root/root/.cargo/bin"
mount --bind "$rustup_home" "$root/root/.rustup"
mount -o remount,bind,ro "$root/root/.rustup"
mount --bind "$cargo_bin" "$root/root/.cargo/bin"
mount -o remount,bind,ro "$root/root/.cargo/bin"
mkdir -p "$root/src/rampart"
git -C "$repo" archive HEAD | tar -x -C "$root/src/rampart"
say "tree of $(git -C "$repo" rev-parse --short HEAD) copied (git archive HEAD)"

in_root() {
  chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "cd /src/rampart && $1"
}

# 1. bash scripts/up.sh, until the stack is healthy, then status, then Ctrl-C.
say "command 1: bash scripts/up.sh (packages, release build, rampart up)"
t1=$(date +%s)
in_root "exec bash scripts/up.sh" >"$log_dir/up.log" 2>&1 </dev/null &
up_pid=$!
up_ok=0
deadline=$((t1 + 1800))
while [ "$(date +%s)" -lt "$deadline" ]; do
  if grep -q "stack healthy in" "$log_dir/up.log"; then up_ok=1; break; fi
  kill -0 "$up_pid" 2>/dev/null || break
  sleep 2
done
t_up=$(($(date +%s) - t1))
if [ "$up_ok" -eq 1 ]; then
  say "up: $(grep -o 'stack healthy in [0-9.]*s' "$log_dir/up.log") after ${t_up}s in all (build included)"
  in_root "./target/release/rampart status" >"$log_dir/status.log" 2>&1 || true
  sed 's/^/    /' "$log_dir/status.log"
  # Ctrl-C: SIGINT to `rampart up` itself ($up_pid is the background subshell, which
  # ignores SIGINT as every background job of a script does).
  rampart_up=""
  for p in $(inside_pids); do
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q "release/rampart up" && rampart_up=$p
  done
  [ -n "$rampart_up" ] && kill -INT "$rampart_up" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$up_pid" 2>/dev/null || break; sleep 1; done
  left=$(inside_pids | wc -l)
  if kill -0 "$up_pid" 2>/dev/null; then
    say "up: still running 60 s after Ctrl-C"; up_ok=0
  elif [ "$left" -gt 0 ]; then
    say "up: stopped, but $left processes of the stack were left running"; up_ok=0
  else
    say "up: Ctrl-C stopped everything"
  fi
else
  say "up: FAILED after ${t_up}s; the end of its output:"
  tail -30 "$log_dir/up.log" | sed 's/^/    /'
fi

tests_ok=skip t_tests=0 summary=""
if [ "$up_only" -eq 0 ] && [ "$up_ok" -eq 1 ]; then
  say "command 2: bash scripts/test.sh (CI=true, no input)"
  t2=$(date +%s)
  if in_root "CI=true bash scripts/test.sh" >"$log_dir/test.log" 2>&1 </dev/null; then
    tests_ok=1
  else
    tests_ok=0
  fi
  t_tests=$(($(date +%s) - t2))
  # (no 'test result' line at all, e.g. a build that failed, must not end the script)
  summary=$({ grep -E '^test result:' "$log_dir/test.log" || true; } \
    | awk '{p+=$4; f+=$6; i+=$8} END {printf "%d passed, %d failed, %d ignored", p, f, i}')
  if [ "$tests_ok" -eq 1 ]; then
    say "tests: passed in ${t_tests}s ($summary)"
  else
    say "tests: FAILED after ${t_tests}s ($summary); the end of their output:"
    grep -E '^(failures:|    [a-z_:]+$|test .* FAILED|error)' "$log_dir/test.log" | head -40 | sed 's/^/    /'
    tail -15 "$log_dir/test.log" | sed 's/^/    /'
  fi
fi

say "report: root ${t_root}s; up.sh $([ "$up_ok" -eq 1 ] && echo ok || echo FAILED) in ${t_up}s;" \
  "test.sh $([ "$tests_ok" = 1 ] && echo "ok in ${t_tests}s ($summary)" || { [ "$tests_ok" = skip ] && echo skipped || echo "FAILED in ${t_tests}s"; })"
say "logs: $log_dir"
[ "$up_ok" -eq 1 ] && [ "$tests_ok" != 0 ]
