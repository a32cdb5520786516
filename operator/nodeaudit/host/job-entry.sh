#!/bin/sh
# What the per-node Job's container runs: copy the bundle (mounted from its ConfigMap at /bundle)
# to /var/lib/nodeaudit/bundles/<hex>/ on the host (mounted at /host), then run apply.sh inside
# the host: nsenter into PID 1's namespaces (needs hostPID: true), chroot /host when that fails.
#
#   sh job-entry.sh            apply
#   sh job-entry.sh --remove   remove the policy's rules
#
# Tests only: NODEAUDIT_BUNDLE_SRC and NODEAUDIT_HOST_MOUNT override /bundle and /host,
# NODEAUDIT_TERMINATION_LOG overrides /dev/termination-log, NODEAUDIT_NSENTER=no goes straight to
# the chroot fallback (nsenter into PID 1 of a test machine would leave the test's root).

set -u
umask 077
SRC=${NODEAUDIT_BUNDLE_SRC:-/bundle}
HOST=${NODEAUDIT_HOST_MOUNT:-/host}
TERMLOG=${NODEAUDIT_TERMINATION_LOG:-/dev/termination-log}
ARG=""
ACTION=apply
case "${1:-}" in
	'') ;;
	--remove) ARG=--remove; ACTION=remove ;;
	*) echo "usage: sh job-entry.sh [--remove]" >&2; exit 2 ;;
esac
case $0 in */*) HERE=${0%/*} ;; *) HERE=. ;; esac
# json_str, read_bundle_env, children: shared with apply.sh, shipped beside it in the bundle.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"

result() { # ok message: a result line of our own when apply.sh never produced one
	line=$(printf '{"ok": %s, "bundle": "%s", "action": "%s", "message": "%s"}' "$1" "$(json_str "${BUNDLE:-}")" \
		"$ACTION" "$(json_str "$2")")
	printf '%s\n' "$line"
	[ -w "$TERMLOG" ] && printf '%s\n' "$line" >"$TERMLOG"
	[ "$1" = true ]
}

# shellcheck disable=SC2317 # called by read_bundle_env
bundle_key() { # key value: one line of bundle.env; only the bundle hash matters here
	[ "$1" != NODEAUDIT_BUNDLE ] || BUNDLE=$2
}

BUNDLE=""
[ -r "$SRC/bundle.env" ] || { result false "no bundle.env in $SRC"; exit 1; }
read_bundle_env "$SRC/bundle.env" bundle_key
HEX=${BUNDLE#sha256:}
case $HEX in '' | *[!0-9a-f]*) result false "bundle.env: NODEAUDIT_BUNDLE is not sha256:<hex>"; exit 1 ;; esac

REL=/var/lib/nodeaudit/bundles/$HEX
DEST=$HOST$REL
mkdir -p "$HOST/var/lib/nodeaudit/bundles" || { result false "cannot create $REL on the host"; exit 1; }
# Copy beside the target, then rename: a half-copied bundle is never run. ConfigMap files are
# symlinks into ..data/; cp of named files follows them, and the glob skips the dot entries.
TMP=$(mktemp -d "$DEST.tmp.XXXXXX") || { result false "cannot create a directory under $REL"; exit 1; }
if ! cp "$SRC"/* "$TMP"/; then
	rm -rf "$TMP"
	result false "cannot copy the bundle to the host"
	exit 1
fi
chmod 0700 "$TMP" && chmod 0600 "$TMP"/* && chmod 0700 "$TMP"/*.sh
{ rm -rf "$DEST" && mv "$TMP" "$DEST"; } || { rm -rf "$TMP"; result false "cannot place the bundle at $REL"; exit 1; }

# NODEAUDIT_HOST_ROOT is apply.sh's test-only file prefix; the environment passes through nsenter
# and chroot, and inside the host it must be empty (the Job spec sets it to /host for this shell).
unset NODEAUDIT_HOST_ROOT
set -- "$REL/apply.sh"
[ -n "$ARG" ] && set -- "$@" "$ARG"
OUT=$(mktemp) || { result false "mktemp failed"; exit 1; }

# Job deletion and activeDeadlineSeconds send SIGTERM to this shell only, and SIGKILL to everything
# after the grace period. apply.sh rolls back on TERM, so it is passed on and waited for: apply.sh
# runs in the background and `wait` lets the trap run. nsenter -p forks and does not forward
# signals (TERM would kill nsenter and leave apply.sh running): under nsenter it is nsenter's
# child, the apply.sh shell, that gets the TERM. Passed on once: apply.sh's rollback is not
# interrupted by a second one.
# shellcheck disable=SC2317 # runs from the trap only
forward_term() {
	trap '' TERM INT
	STOPPED=$1
	[ -n "$child" ] && [ -z "$SENT" ] || return 0
	SENT=yes
	targets=$child
	[ "$VIA" = nsenter ] && targets=$(children "$child")
	echo "nodeaudit: SIG$1: passing TERM on to apply.sh" >&2
	# shellcheck disable=SC2086 # one or more pids
	kill -TERM ${targets:-$child} 2>/dev/null
}

child=""
STOPPED=""
SENT=""
trap 'forward_term TERM' TERM
trap 'forward_term INT' INT
VIA=chroot
if [ "${NODEAUDIT_NSENTER:-yes}" != no ] && nsenter -t 1 -m -u -i -n -p -- true 2>/dev/null; then
	VIA=nsenter
else
	echo "nodeaudit: nsenter into PID 1 failed (hostPID off?); using chroot $HOST" >&2
fi
if [ -n "$STOPPED" ]; then
	rm -f "$OUT"
	result false "stopped by SIG$STOPPED before apply.sh started"
	exit 1
fi
if [ "$VIA" = nsenter ]; then
	nsenter -t 1 -m -u -i -n -p -- sh "$@" >"$OUT" &
else
	chroot "$HOST" sh "$@" >"$OUT" &
fi
child=$!
[ -z "$STOPPED" ] || forward_term "$STOPPED"
wait "$child"
rc=$?
# A trapped signal ends `wait` early (status > 128) while apply.sh still runs: wait again.
while [ "$rc" -gt 128 ] && kill -0 "$child" 2>/dev/null; do
	wait "$child"
	rc=$?
done
cat "$OUT"
last=$(tail -n 1 "$OUT")
rm -f "$OUT"
case $last in
	'{"ok": '*)
		[ -w "$TERMLOG" ] && printf '%s\n' "$last" >"$TERMLOG"
		exit "$rc" ;;
esac
result false "apply.sh exited $rc without a result line"
exit 1
