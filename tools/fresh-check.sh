#!/usr/bin/env bash
# make fresh-check: the README's two commands (`make demo`, `make test`) as a new user runs them, on
# a fresh Debian 12 machine: a Debian bookworm minbase root built with mmdebstrap (plus make and git,
# which a user who cloned and runs `make` has), a clean clone of HEAD copied in, chroot with /proc,
# /sys and /dev bound and /run/lock bound so the kernel-audit lock stays machine-wide.
#
# The root gets this machine's way to the registries, as a fresh machine here has it: /etc/apt
# (sources, apt.conf.d, keys), resolv.conf, the local CA certificates, the pip configuration files,
# what `pip config list` points at (files copied, local index directories bound read-only) and the
# PIP_* / SSL / proxy environment. Nothing else of this machine goes in.
#
# Prints the pytest summary line and the demo's outcome; logs go to out/fresh-check/. Always
# unmounts (the mounts live in a private mount namespace and are also unmounted explicitly), stops
# what it started inside the root (by PID) and deletes the root. Exit 0 when both commands passed.
#
# Usage: tools/fresh-check.sh         (root; NODEAUDIT_CACHE_DIR caches the root's tarball)
#   NODEAUDIT_FRESH_WORKDIR  where the root is extracted (default /var/tmp)
#   NODEAUDIT_DEBIAN_MIRROR  Debian mirror for mmdebstrap (default http://deb.debian.org/debian)
set -euo pipefail
{ # read to the end before running: editing this file during a run must not change the run

SUITE=bookworm
REPO=$(cd "$(dirname "$0")/.." && pwd)
SELF=$REPO/tools/fresh-check.sh
SRC=/root/nodeaudit # where the clone lives inside the root
PATH_IN=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() { echo "fresh-check: $*" >&2; exit 2; }

# ---- one command in the fresh root, as its own machine --------------------------------------------
if [ "${1:-}" = --pivot ]; then
  cd "$2"
  env_in=(HOME=/root PATH="$PATH_IN" LANG=C.UTF-8 TERM=dumb)
  while IFS= read -r kv; do env_in+=("$kv"); done <.fresh-check-env
  mkdir -p .oldroot
  pivot_root . .oldroot
  exec chroot . /usr/bin/env -i "${env_in[@]}" /bin/sh -c "umount -l /.oldroot && rmdir /.oldroot && $3"
fi

# ---- inside the private mount namespace: mount, run, unmount --------------------------------------
if [ "${1:-}" = --inside ]; then
  root=$2 logs=$3
  shift 3
  mounted=()
  # shellcheck disable=SC2317 # called by the EXIT trap
  unmount_all() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
      umount -R "${mounted[$i]}" 2>/dev/null || umount -R -l "${mounted[$i]}" 2>/dev/null || true
    done
  }
  trap unmount_all EXIT
  bind() { # bind SRC DST [ro]
    mkdir -p "$2"
    mount --rbind "$1" "$2"
    mount --make-rslave "$2"
    mounted+=("$2")
    if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
  }
  # The root must be a mount point of its own: unshare --propagation (the host tests) and mmdebstrap
  # change the propagation of "/", which the kernel refuses for a plain directory.
  bind "$root" "$root"
  bind /proc "$root/proc"
  bind /sys "$root/sys"
  bind /dev "$root/dev"
  bind /run/lock "$root/run/lock"
  while IFS= read -r dir; do
    [ -n "$dir" ] && bind "$dir" "$root$dir" ro
  done <"$root/.fresh-check-binds"

  # Each command in a mount namespace of its own whose root *is* the fresh root (pivot_root, the
  # machine's tree unmounted): as on a machine of its own, a process's /proc/PID/root then reads as
  # a path of the fresh root (a plain chroot would show the machine's path, and the host tests find
  # the daemons they started by that path).
  inside() { unshare --mount --propagation private -- "$SELF" --pivot "$root" "$1"; }

  inside 'update-ca-certificates >/dev/null 2>&1 || true'
  status=0
  for cmd in demo test; do
    started=$SECONDS
    echo "fresh-check: make $cmd (log: $logs/$cmd.log)"
    if inside "cd $SRC && timeout 4500 make $cmd" >"$logs/$cmd.log" 2>&1; then rc=0; else rc=$?; fi
    echo "$rc $((SECONDS - started))" >"$logs/$cmd.rc"
    [ "$rc" -eq 0 ] || status=1
  done
  exit "$status"
fi

# ---- outside: the root, the clone, the configuration, then the namespace -------------------------
[ "$(id -u)" = 0 ] || die "needs root (chroot, mounts, kernel audit for the host tests)"
for tool in mmdebstrap unshare pivot_root zstd git flock; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: make apt-deps installs it"
done
git -C "$REPO" rev-parse --verify -q HEAD >/dev/null || die "$REPO is not a git clone with a commit"

cache=${NODEAUDIT_CACHE_DIR:-$REPO/.cache}/rootfs
mirror=${NODEAUDIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
tarball=$cache/fresh-check-$SUITE-minbase-make-git.tar.zst
mkdir -p "$cache"
t0=$SECONDS
(
  flock 9 # the same lock as the tests' root builds: one build at a time, once for everyone
  if [ ! -s "$tarball" ]; then
    echo "fresh-check: building $tarball with mmdebstrap (once)"
    partial=$cache/.fresh-check.$$.partial.tar.zst
    trap 'rm -f "$partial"' EXIT
    mmdebstrap --quiet --variant=minbase --include=make,git,ca-certificates "$SUITE" "$partial" \
      "deb $mirror $SUITE main" "deb $mirror $SUITE-updates main" "deb ${mirror%/debian}/debian-security $SUITE-security main"
    mv "$partial" "$tarball"
  fi
) 9>"$cache/.build.lock"

workdir=$(mktemp -d "${NODEAUDIT_FRESH_WORKDIR:-/var/tmp}/nodeaudit-fresh.XXXXXX")
root=$workdir/root
logs=$REPO/out/fresh-check
mkdir -p "$root" "$logs"
rm -f "$logs"/*.log "$logs"/*.rc

# Everything the run starts (auditd a host test leaked included) is in this cgroup: seen from here, a
# process under pivot_root has "/" as its root, so only the cgroup finds them all.
cgroup=""
for hierarchy in /sys/fs/cgroup/pids /sys/fs/cgroup/unified /sys/fs/cgroup; do
  if [ -w "$hierarchy" ] && mkdir "$hierarchy/${workdir##*/}" 2>/dev/null; then
    cgroup=$hierarchy/${workdir##*/}
    break
  fi
done
# shellcheck disable=SC2317 # called by cleanup, the EXIT trap
started_here() { # PIDs of the run (cgroup), or, without one, those whose root is below the fresh root
  local p
  if [ -n "$cgroup" ]; then
    cat "$cgroup/cgroup.procs" 2>/dev/null || true
    return 0
  fi
  for p in /proc/[0-9]*; do
    case "$(readlink "$p/root" 2>/dev/null)" in "$root" | "$root"/*) echo "${p#/proc/}" ;; esac
  done
  return 0
}
# shellcheck disable=SC2317 # called by cleanup
release_dead_audit_daemon() {
  # An audit daemon killed above stays registered with the kernel until someone asks: the next host
  # test anywhere on the machine would refuse to start. The kernel tests the registered connection
  # first and only lets go of a dead one; a live daemon cannot be unregistered this way.
  PYTHONPATH="$REPO/operator" flock -w 900 /run/lock/nodeaudit-kernel-audit.lock python3 - <<'PY' || true
import os
from nodeaudit.hostaudit.netlink import STATUS_PID, AuditSocket

sock = AuditSocket()
try:
    pid = sock.status()["pid"]
    if pid and not os.path.exists(f"/proc/{pid}"):
        sock.set_status(STATUS_PID, pid=0)
        print(f"fresh-check: released the kernel's registration of the dead audit daemon {pid}")
finally:
    sock.close()
PY
}
# shellcheck disable=SC2317 # the EXIT trap
cleanup() {
  local pids tries=0 signal killed=""
  pids=$(started_here)
  [ -z "$pids" ] || killed=yes
  while [ -n "$pids" ] && [ "$tries" -lt 10 ]; do
    signal=-TERM
    [ "$tries" -lt 5 ] || signal=-KILL
    echo "fresh-check: stopping what the run left behind: $(echo "$pids" | tr '\n' ' ')" >&2
    # shellcheck disable=SC2086 # a list of PIDs
    kill "$signal" $pids 2>/dev/null || true
    sleep 1
    tries=$((tries + 1))
    pids=$(started_here)
  done
  [ -z "$killed" ] || release_dead_audit_daemon
  [ -z "$cgroup" ] || rmdir "$cgroup" 2>/dev/null || echo "fresh-check: could not remove $cgroup" >&2
  if grep -q " $root/" /proc/self/mountinfo; then # never delete through a mount
    echo "fresh-check: mounts left under $root; not deleting it" >&2
    return
  fi
  rm -rf --one-file-system "$workdir"
}
trap cleanup EXIT

tar --zstd -xpf "$tarball" -C "$root"
# A clean clone of HEAD: what is committed, nothing of this working tree's state.
git clone --quiet --no-hardlinks --no-checkout "$REPO" "$root$SRC"
git -C "$root$SRC" checkout --quiet --detach "$(git -C "$REPO" rev-parse HEAD)"
head=$(git -C "$REPO" rev-parse --short HEAD)

# This machine's way to the registries.
rm -f "$root/etc/apt/sources.list" # mmdebstrap's own; the machine's sources replace it
cp -a /etc/apt/. "$root/etc/apt/"
cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
if [ -d /usr/local/share/ca-certificates ]; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
for conf in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
  [ -f "$conf" ] || continue
  dest=$root${conf/#$HOME//root}
  mkdir -p "$(dirname "$dest")"
  cp "$conf" "$dest"
done
: >"$root/.fresh-check-binds"
pip_config=$(python3 -m pip config list 2>/dev/null || true)
for word in $(printf '%s\n' "$pip_config" | sed -n "s/^[^=]*='\(.*\)'$/\1/p"); do
  path=${word#file://}
  case "$path" in /*) ;; *) continue ;; esac
  path=${path%/simple}                 # an index: bind its whole directory (files/ beside simple/)
  if [ -f "$path" ]; then
    mkdir -p "$root$(dirname "$path")" && cp "$path" "$root$path"
  elif [ -d "$path" ]; then
    echo "$path" >>"$root/.fresh-check-binds"
  fi
done
env | grep -E '^(PIP_[A-Z_]+|SSL_CERT_FILE|SSL_CERT_DIR|REQUESTS_CA_BUNDLE|https?_proxy|no_proxy|HTTPS?_PROXY|NO_PROXY)=' \
  >"$root/.fresh-check-env" || true
echo "fresh-check: Debian 12 root ready at $root ($((SECONDS - t0)) s), clone of $head"

status=0
# shellcheck disable=SC2016 # $$ is the inner shell's, expanded there
sh -c '[ -z "$1" ] || echo $$ >"$1/cgroup.procs"; shift; exec "$@"' sh "$cgroup" \
  unshare --mount --propagation private -- "$SELF" --inside "$root" "$logs" || status=$?

summary() { grep -E '^=+ .*[0-9]+ (passed|failed|error)' "$logs/test.log" 2>/dev/null | tail -n 1 | sed 's/^=* //; s/ =*$//'; }
{ read -r demo_rc demo_s <"$logs/demo.rc"; } 2>/dev/null || { demo_rc=none demo_s=0; }
{ read -r test_rc test_s <"$logs/test.rc"; } 2>/dev/null || { test_rc=none test_s=0; }
pytest_summary=$(summary)
demo_outcome=$(grep -E 'Ready=|AgentReady' "$logs/demo.log" 2>/dev/null | tail -n 2 | sed 's/^ *//' | paste -sd ';' -)
echo "fresh-check: HEAD $head on a fresh Debian 12 root"
echo "fresh-check: make demo: exit $demo_rc after $demo_s s: ${demo_outcome:-no status line (see $logs/demo.log)}"
echo "fresh-check: make test: exit $test_rc after $test_s s: ${pytest_summary:-no pytest summary (see $logs/test.log)}"
echo "fresh-check: skip reasons: $(grep -cE '^SKIPPED' "$logs/test.log" 2>/dev/null || true) SKIPPED lines in $logs/test.log"
exit "$status"
}
