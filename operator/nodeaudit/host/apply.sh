#!/bin/sh
# nodeaudit host side: install auditd when missing, put this bundle's audit rules and the syslog
# plugin config in place, make auditd use them, verify, and print one JSON result line.
#
#   sh apply.sh            apply the bundle in this script's directory
#   sh apply.sh --remove   take this policy's rules out again; restore the plugin config when no
#                          other nodeaudit policy is left on the host
#
# Runs as root inside the host (nsenter into PID 1's namespaces, or chroot). Every other input is
# read from this script's directory; bundle.env is parsed, never sourced, so nothing a policy says
# ever becomes shell text.
#
# NODEAUDIT_HOST_ROOT (tests only, default "/"): a prefix for every host file this script reads or
# writes, so the branch tests can run it against /etc/os-release fixtures in a temporary directory
# with stand-in commands on PATH. When it is set, the usual sbin directories are not appended to
# PATH, so that the stand-ins are the only audit and package tools found. Never set it on a node.
#
# Read top to bottom: settings and state globals, then the helpers by topic (bundle, distro and
# package, kernel and daemon state, files, apply, remove), and `main` last.

set -u
umask 077
export LC_ALL=C
# Keep apt, debconf and needrestart from prompting, and needrestart from restarting node services
# (containerd, kubelet) as a side effect of installing auditd.
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l NEEDRESTART_SUSPEND=1

R=${NODEAUDIT_HOST_ROOT:-}
R=${R%/}
if [ -z "${NODEAUDIT_HOST_ROOT:-}" ]; then
	# The Job's container PATH may lack the sbin directories where auditd and auditctl live.
	PATH="${PATH:-/usr/bin:/bin}:/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin"
	export PATH
fi

BUNDLE_DIR=$(cd "$(dirname "$0")" && pwd) || exit 2
# json_str, read_bundle_env, children: shared with job-entry.sh, shipped beside it in the bundle.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$BUNDLE_DIR/lib.sh"
STATE_DIR="$R/var/lib/nodeaudit/state"
RULES_D="$R/etc/audit/rules.d"
ACTION=apply     # apply | remove: set by main from the command line

# Result fields (CONTRACTS.md, "apply.sh result line").
POLICY=""
BUNDLE=""
RULES_FILE=""
SYSLOG=yes
ALLOW_IMMUTABLE=no
ALLOW_PANIC=no
INSTALL_TIMEOUT=300
DISTRO=unknown
AUDIT_VERSION=""
RULES_LOADED=0
INSTALLED=false
RESTARTED=false
LOST=0
BACKLOG=0
SYSLOG_FORMAT=raw  # json: the nodeaudit dispatcher forwards events; raw: audisp-syslog, as before
FALLBACK=""        # why a json bundle runs the raw path on this host (said in the result line)
CANARY_ID=""       # the canary this apply sent (node:bundle:time-pid), empty when none was sent
CANARY_AT=0        # its time, seconds since the epoch
CANARY_SEEN=none   # where this node saw it after the kernel: dispatcher | journal | syslog | auditd | none

TX=""            # backup directory while host files are being changed; empty otherwise
PLUGIN_FILE=""   # host path of the syslog plugin config for this audit version
PLUGIN_SRC=""    # the bundle's config for that path
PLUGIN_KEY=""    # v2 | v3: names the saved original under $STATE_DIR
PLUGIN_CHANGED=no
AUDITD_PID=0
ENABLED=0        # the kernel's audit enabled flag (auditctl -s), read by read_status
MISSING=""       # count_loaded: the first expected rule absent from `auditctl -l`
PM=""            # apt | tdnf, from detect_distro
PKG_LOG=""       # output of the last package command
DEADLINE=0       # when the package step must be done (epoch seconds)
LOAD_ERR=""      # why load_rules failed
ROLLBACK_ERR=""  # what rollback could not restore
LOCKED=no        # yes while this run holds the host lock (fd 9)
QUEUE_CHANGED=no # apply_queue_settings changed -b/-r/--backlog_wait_time
# The JSON dispatcher (syslog.format json; its section below).
DISPATCHER_FILES="dispatcher.py records.py"
DISPATCHER_DIR="$R/var/lib/nodeaudit/dispatcher"
DISPATCHER_STATE="$R/var/lib/nodeaudit/state/dispatcher.json"
DPLUGIN_FILE=""  # plugins.d/nodeaudit.conf, when this apply installs or retires the dispatcher
DPLUGIN_SRC=""   # its config with the node's python3 filled in; empty: the config must go
PYTHON3=""

log() { echo "nodeaudit: $*" >&2; }

# Runs COMMAND every 0.2 s until it succeeds, for at most SECONDS; 1 when the time ran out.
poll() { # seconds command...
	poll_n=$(($1 * 5))
	shift
	while [ "$poll_n" -gt 0 ]; do
		"$@" && return 0
		sleep 0.2
		poll_n=$((poll_n - 1))
	done
	return 1
}

emit() { # ok message
	line=$(printf '{"ok": %s, "bundle": "%s", "policy": "%s", "action": "%s", "distro": "%s", "auditVersion": "%s", "rulesLoaded": %d, "installed": %s, "restarted": %s, "lost": %d, "backlog": %d, "syslogFormat": "%s", "fallback": "%s", "dispatcher": %s, "canaryId": "%s", "canaryAt": %d, "canarySeen": "%s", "message": "%s"}' \
		"$1" "$(json_str "$BUNDLE")" "$(json_str "$POLICY")" "$ACTION" "$(json_str "$DISTRO")" \
		"$(json_str "$AUDIT_VERSION")" "$RULES_LOADED" "$INSTALLED" "$RESTARTED" "$LOST" "$BACKLOG" \
		"$SYSLOG_FORMAT" "$(json_str "$FALLBACK")" "$(dispatcher_counters)" \
		"$(json_str "$CANARY_ID")" "$CANARY_AT" "$CANARY_SEEN" "$(json_str "$2")")
	if [ -e "$R/dev/termination-log" ]; then
		printf '%s\n' "$line" >"$R/dev/termination-log" 2>/dev/null || true
	fi
	printf '%s\n' "$line"
}

fail() {
	msg=$1
	trap - INT TERM HUP
	if [ -n "$TX" ]; then
		if rollback; then
			msg="$msg (previous rules and plugin config restored)"
		else
			msg="$msg (ROLLBACK INCOMPLETE: ${ROLLBACK_ERR%; })"
		fi
	fi
	read_status
	log "failed: $msg"
	emit false "$msg"
	exit 1
}

# ---------------------------------------------------------------------------------------------
# Bundle

# shellcheck disable=SC2317 # called by read_bundle_env
env_setting() { # key value: one line of bundle.env
	k=$1 v=$2
	case $v in *[!A-Za-z0-9._:/,-]*) fail "bundle.env: value of $k has characters outside [A-Za-z0-9._:/,-]" ;; esac
	case $k in
		NODEAUDIT_POLICY) POLICY=$v ;;
		NODEAUDIT_BUNDLE) BUNDLE=$v ;;
		NODEAUDIT_RULES_FILE) RULES_FILE=$v ;;
		NODEAUDIT_SYSLOG) SYSLOG=$v ;;
		NODEAUDIT_ALLOW_IMMUTABLE) ALLOW_IMMUTABLE=$v ;;
		NODEAUDIT_ALLOW_PANIC) ALLOW_PANIC=$v ;;
		NODEAUDIT_INSTALL_TIMEOUT) INSTALL_TIMEOUT=$v ;;
		NODEAUDIT_SYSLOG_FORMAT) SYSLOG_FORMAT=$v ;;
		*) ;; # newer keys are ignored by older scripts on purpose
	esac
}

read_env() {
	env_file="$BUNDLE_DIR/bundle.env"
	[ -r "$env_file" ] || fail "bundle.env missing in $BUNDLE_DIR"
	read_bundle_env "$env_file" env_setting
	case $POLICY in '' | *[!a-z0-9-]*) fail "bundle.env: NODEAUDIT_POLICY missing or not a DNS-1123 label" ;; esac
	# The rules file name becomes a path: only the one name this policy may own is accepted.
	[ "$RULES_FILE" = "60-nodeaudit-$POLICY.rules" ] || fail "bundle.env: NODEAUDIT_RULES_FILE must be 60-nodeaudit-$POLICY.rules"
	case $SYSLOG in yes | no) ;; *) fail "bundle.env: NODEAUDIT_SYSLOG must be yes or no" ;; esac
	case $ALLOW_IMMUTABLE in yes | no) ;; *) fail "bundle.env: NODEAUDIT_ALLOW_IMMUTABLE must be yes or no" ;; esac
	case $ALLOW_PANIC in yes | no) ;; *) fail "bundle.env: NODEAUDIT_ALLOW_PANIC must be yes or no" ;; esac
	case $INSTALL_TIMEOUT in '' | *[!0-9]*) fail "bundle.env: NODEAUDIT_INSTALL_TIMEOUT must be seconds" ;; esac
	case $SYSLOG_FORMAT in json | raw) ;; *) fail "bundle.env: NODEAUDIT_SYSLOG_FORMAT must be json or raw" ;; esac
	[ "$ACTION" = remove ] && return 0
	for f in "$RULES_FILE" expected.rules syslog-v3.conf syslog-v2.conf; do
		[ -r "$BUNDLE_DIR/$f" ] || fail "bundle file $f missing in $BUNDLE_DIR"
	done
	if [ "$SYSLOG_FORMAT" = json ]; then
		for f in $DISPATCHER_FILES dispatcher.json dispatcher-v3.conf dispatcher-v2.conf syslog-off-v3.conf syslog-off-v2.conf; do
			[ -r "$BUNDLE_DIR/$f" ] || fail "bundle file $f missing in $BUNDLE_DIR"
		done
	fi
	# -e 2 locks the rules until reboot (no later fix or removal possible); -f 2 panics the kernel
	# when audit fails. Each needs the policy's explicit opt-in (spec.unsafe), checked again here
	# so that a bundle edited by hand cannot take a node down.
	if [ "$ALLOW_IMMUTABLE" != yes ] && grep -Eq '^[[:space:]]*-e[[:space:]]+2([[:space:]]|$)' "$BUNDLE_DIR/$RULES_FILE"; then
		fail "rules file sets -e 2 (immutable) but the policy does not allow it"
	fi
	if [ "$ALLOW_PANIC" != yes ] && grep -Eq '^[[:space:]]*-f[[:space:]]+2([[:space:]]|$)' "$BUNDLE_DIR/$RULES_FILE"; then
		fail "rules file sets -f 2 (kernel panic on audit failure) but the policy does not allow it"
	fi
}

# ---------------------------------------------------------------------------------------------
# Distro and package

os_field() { # KEY -> value from os-release, quotes stripped
	sed -n "s/^$1=//p" "$R/etc/os-release" | head -n 1 | sed "s/^[\"']//; s/[\"']\$//"
}

detect_distro() {
	[ -r "$R/etc/os-release" ] || fail "cannot detect distro: /etc/os-release missing"
	id=$(os_field ID)
	ver=$(os_field VERSION_ID)
	DISTRO="$id-$ver"
	case $id in
		ubuntu)
			case $ver in
				18.04 | 20.04 | 22.04 | 24.04) PM=apt ;;
				*) fail "unsupported Ubuntu release $ver (supported: 18.04, 20.04, 22.04, 24.04)" ;;
			esac ;;
		debian) PM=apt ;;
		mariner)
			case $ver in 2.*) PM=tdnf ;; *) fail "unsupported CBL-Mariner release $ver (supported: 2.0)" ;; esac ;;
		azurelinux)
			case $ver in 3.*) PM=tdnf ;; *) fail "unsupported Azure Linux release $ver (supported: 3.0)" ;; esac ;;
		*) fail "unsupported distro ID=$id VERSION_ID=$ver" ;;
	esac
}

auditd_present() {
	command -v auditd >/dev/null 2>&1 && command -v auditctl >/dev/null 2>&1 && command -v augenrules >/dev/null 2>&1
}

# Another apt/dpkg/tdnf run (unattended-upgrades, cloud-init, node bootstrap) holds the lock.
# Not "dpkg was interrupted": that does not pass by waiting (it needs `dpkg --configure -a`), so it
# is reported as a failure with apt's own words.
lock_busy() {
	grep -Eqi 'could not get lock|unable to acquire the dpkg frontend lock|is another process using it|waiting for (the )?lock|locked by another|instance.*lock' "$1"
}

# Runs one package command bounded by the time left; 0 ok, 1 failed, 2 lock busy, 3 out of time.
pkg_step() {
	left=$((DEADLINE - $(date +%s)))
	[ "$left" -gt 0 ] || return 3
	if command -v timeout >/dev/null 2>&1; then
		timeout "$left" "$@" </dev/null >"$PKG_LOG" 2>&1 9>&-
	else
		"$@" </dev/null >"$PKG_LOG" 2>&1 9>&-
	fi
	rc=$?
	[ "$rc" -eq 0 ] && return 0
	[ "$rc" -eq 124 ] && return 3
	lock_busy "$PKG_LOG" && return 2
	return 1
}

pkg_error() { # the most telling line of the last package command's output
	e=$(grep -E '^(E|Error|error):' "$PKG_LOG" | tail -n 3 | tr '\n' ' ')
	[ -n "$e" ] || e=$(tail -n 3 "$PKG_LOG" | tr '\n' ' ')
	printf '%s' "$e"
}

install_auditd() {
	PKG_LOG=$(mktemp) || fail "mktemp failed"
	DEADLINE=$(($(date +%s) + INSTALL_TIMEOUT))
	updated=no
	while :; do
		left=$((DEADLINE - $(date +%s)))
		case $PM in
			apt)
				# Package lists on a node image may be stale or (minimal images) absent: refresh
				# them once; a failed refresh is judged by whether the install then works.
				if [ "$updated" = no ]; then
					log "apt-get update"
					pkg_step apt-get -q -o "DPkg::Lock::Timeout=$left" update
					case $? in 2) sleep 5; continue ;; 3) break ;; esac
					updated=yes
				fi
				log "apt-get install auditd"
				pkg_step apt-get -q -y -o "DPkg::Lock::Timeout=$left" \
					-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
					install --no-install-recommends auditd
				rc=$? ;;
			tdnf)
				log "tdnf install audit"
				pkg_step tdnf install -y audit
				rc=$? ;;
		esac
		case $rc in
			0) INSTALLED=true; rm -f "$PKG_LOG"; return 0 ;;
			2) log "package database locked, retrying"; sleep 5 ;;
			3) break ;;
			*) err=$(pkg_error); rm -f "$PKG_LOG"; fail "package install failed ($PM): $err" ;;
		esac
	done
	err=$(pkg_error)
	rm -f "$PKG_LOG"
	fail "package install did not finish within ${INSTALL_TIMEOUT}s ($PM)${err:+: last output: $err}"
}

detect_audit_version() {
	raw=$(auditctl -v 2>&1)
	AUDIT_VERSION=$(printf '%s\n' "$raw" | sed -n 's/.*version[[:space:]]*\([0-9][0-9.]*\).*/\1/p' | head -n 1)
	if [ -z "$AUDIT_VERSION" ]; then
		if command -v dpkg-query >/dev/null 2>&1; then
			AUDIT_VERSION=$(dpkg-query -W -f '${Version}' auditd 2>/dev/null | sed 's/^[0-9]*://; s/[-+~].*//')
		elif command -v rpm >/dev/null 2>&1; then
			AUDIT_VERSION=$(rpm -q --qf '%{VERSION}' audit 2>/dev/null)
		fi
	fi
	case $AUDIT_VERSION in
		2.*) PLUGIN_KEY=v2; PLUGIN_FILE="$R/etc/audisp/plugins.d/syslog.conf" ;;
		[3-9].*)
			PLUGIN_KEY=v3
			# auditd.conf may move the plugin directory; the default is /etc/audit/plugins.d.
			dir=$(sed -n 's/^[[:space:]]*plugin_dir[[:space:]]*=[[:space:]]*\([^[:space:]]*\).*/\1/p' "$R/etc/audit/auditd.conf" 2>/dev/null | tail -n 1)
			PLUGIN_FILE="$R${dir:-/etc/audit/plugins.d}"
			PLUGIN_FILE="${PLUGIN_FILE%/}/syslog.conf" ;;
		*)
			# What the tools said, not what could be parsed from it (that is empty or unusable).
			raw=$(printf '%s\n' "$raw" | head -n 3 | tr '\n' ' ' | sed 's/ *$//')
			pkg=""
			[ -z "$AUDIT_VERSION" ] || pkg="; package version: $AUDIT_VERSION"
			fail "cannot tell the audit version (auditctl -v: '$raw'$pkg)" ;;
	esac
	PLUGIN_SRC="$BUNDLE_DIR/syslog-$PLUGIN_KEY.conf"
}

# ---------------------------------------------------------------------------------------------
# Kernel and daemon state

read_status() {
	command -v auditctl >/dev/null 2>&1 || return 0
	st=$(auditctl -s 2>/dev/null) || return 0
	AUDITD_PID=$(printf '%s\n' "$st" | sed -n 's/^pid \([0-9]*\).*/\1/p')
	ENABLED=$(printf '%s\n' "$st" | sed -n 's/^enabled \([0-9]*\).*/\1/p')
	LOST=$(printf '%s\n' "$st" | sed -n 's/^lost \([0-9]*\).*/\1/p')
	BACKLOG=$(printf '%s\n' "$st" | sed -n 's/^backlog \([0-9]*\).*/\1/p')
	: "${AUDITD_PID:=0}" "${ENABLED:=0}" "${LOST:=0}" "${BACKLOG:=0}"
}

# Counts the expected lines present in `auditctl -l`; MISSING holds the first one absent.
count_loaded() {
	listed=$(auditctl -l 2>/dev/null)
	RULES_LOADED=0
	MISSING=""
	[ -r "$BUNDLE_DIR/expected.rules" ] || return 0
	while IFS= read -r line || [ -n "$line" ]; do
		[ -n "$line" ] || continue
		if printf '%s\n' "$listed" | grep -Fxq -- "$line"; then
			RULES_LOADED=$((RULES_LOADED + 1))
		elif [ -z "$MISSING" ]; then
			MISSING=$line
		fi
	done <"$BUNDLE_DIR/expected.rules"
}

# Starts something that may leave a daemon behind. The daemon must not inherit the host lock
# (fd 9: the next apply would wait for it forever) nor our stdout/stderr (whoever reads them, the
# Job's log or a test, would wait for EOF until the daemon exits): its output goes via a file.
daemon_cmd() {
	dlog=$(mktemp) || return 1
	"$@" </dev/null >"$dlog" 2>&1 9>&-
	drc=$?
	cat "$dlog" >&2
	rm -f "$dlog"
	return "$drc"
}

systemd_booted() { [ -d "$R/run/systemd/system" ] && command -v systemctl >/dev/null 2>&1; }

# shellcheck disable=SC2317 # called by poll
auditd_running() { read_status; [ "$AUDITD_PID" != 0 ]; }

wait_running() { poll "$1" auditd_running; } # seconds

# shellcheck disable=SC2317 # called by poll
pid_gone() { ! kill -0 "$1" 2>/dev/null; }

start_auditd() {
	log "starting auditd"
	RESTARTED=true
	if systemd_booted; then
		systemctl enable auditd >/dev/null 2>&1 || true
		daemon_cmd systemctl start auditd
		wait_running 5 && return 0
	elif command -v service >/dev/null 2>&1; then
		daemon_cmd service auditd start
		wait_running 5 && return 0
	fi
	# No init system that can start it (a chroot, a minimal host): run the daemon itself.
	daemon_cmd auditd
	wait_running 10
}

restart_auditd() {
	log "restarting auditd"
	RESTARTED=true
	# `systemctl reload` fails (no reload in the upstream unit); upstream units refuse a manual
	# stop, so restart is the only systemd verb that works everywhere.
	if systemd_booted; then
		daemon_cmd systemctl restart auditd
		wait_running 10 && return 0
	elif command -v service >/dev/null 2>&1; then
		daemon_cmd service auditd restart
		wait_running 10 && return 0
	else
		read_status
		if [ "$AUDITD_PID" != 0 ]; then
			kill -TERM "$AUDITD_PID" 2>/dev/null
			poll 10 pid_gone "$AUDITD_PID"
		fi
	fi
	start_auditd
}

# Is the 3.x syslog plugin process running under auditd? Decides whether a SIGHUP was enough.
plugin_running() {
	[ "$AUDITD_PID" != 0 ] || return 1
	want=$(sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*\([^[:space:]]*\).*/\1/p' "${DPLUGIN_SRC:-$PLUGIN_SRC}" | head -n 1)
	for k in $(children "$AUDITD_PID"); do
		arg0=$(tr '\0' '\n' <"/proc/$k/cmdline" 2>/dev/null | head -n 1)
		[ "$arg0" = "$want" ] && return 0
	done
	return 1
}

wait_plugin() { poll "$1" plugin_running; } # seconds

# Make the running auditd (re)read its plugin configs. Measured on audit 3.0.9: SIGHUP alone
# starts a newly activated plugin, so 3.x restarts only when the plugin still is not up after it.
# 2.x dispatches through audispd, whose HUP handling could not be verified here: restart.
reread_plugins() {
	read_status
	if [ "$AUDITD_PID" = 0 ]; then
		start_auditd || return 1
		return 0
	fi
	if [ "$PLUGIN_KEY" = v3 ]; then
		auditctl --signal hup >/dev/null 2>&1 || kill -HUP "$AUDITD_PID" 2>/dev/null
		if plugin_wanted; then
			wait_plugin 3 && return 0
			log "plugin not started by SIGHUP"
		else
			return 0
		fi
	fi
	restart_auditd
}

plugin_wanted() {
	conf=$PLUGIN_FILE
	[ -z "$DPLUGIN_SRC" ] || conf=$DPLUGIN_FILE
	grep -Eq '^[[:space:]]*active[[:space:]]*=[[:space:]]*yes' "$conf" 2>/dev/null
}

# ---------------------------------------------------------------------------------------------
# Files

# Root-owned 0640 regular file, replaced by rename so readers never see half a file. auditd
# refuses plugin configs that are group/world writable or symlinks; the temp name ends in .tmp so
# neither augenrules (*.rules) nor auditd (*.conf) ever picks it up.
put_file() { # src dst
	dst_dir=$(dirname "$2")
	mkdir -p "$dst_dir" || return 1
	tmp="$dst_dir/.nodeaudit-$$.tmp"
	cp "$1" "$tmp" && chown 0:0 "$tmp" && chmod 0640 "$tmp" && mv -f "$tmp" "$2" && return 0
	rm -f "$tmp"
	return 1
}

file_right() { # src dst: same bytes, a regular file (not a symlink), 0640, root-owned
	[ -f "$2" ] && [ ! -L "$2" ] && cmp -s "$1" "$2" && [ "$(stat -c '%a %u %g' "$2")" = "640 0 0" ]
}

# Keeps a copy of a host file (or a note that it was absent) in a transaction directory.
backup() { # path dir/name
	if [ -e "$1" ] || [ -L "$1" ]; then
		cp -pP "$1" "$2" || return 1
	else
		: >"$2.absent" || return 1
	fi
}

restore() { # path name
	if [ -e "$TX/$2.absent" ]; then
		rm -f "$1"
	elif [ -e "$TX/$2" ] || [ -L "$TX/$2" ]; then
		tmp="$(dirname "$1")/.nodeaudit-$$.tmp"
		cp -pP "$TX/$2" "$tmp" && mv -f "$tmp" "$1"
	fi
}

# TX is set only once every backup is complete: rollback must never copy half a backup over a
# good file. A failed backup leaves the host untouched, so there is nothing to roll back.
begin_tx() {
	{ mkdir -p "$STATE_DIR" && chmod 0700 "$STATE_DIR"; } || fail "cannot create $STATE_DIR"
	# A run killed by SIGKILL (grace period over) leaves its backup directory behind. Under the host
	# lock no other run is inside a transaction, so every tx.* left is stale; without it, keep them.
	[ "$LOCKED" = yes ] && rm -rf "$STATE_DIR"/tx.*
	tx=$(mktemp -d "$STATE_DIR/tx.XXXXXX") || fail "cannot create a backup directory in $STATE_DIR"
	if ! backup "$RULES_D/$RULES_FILE" "$tx/rules"; then
		rm -rf "$tx"
		fail "cannot back up $RULES_D/$RULES_FILE"
	fi
	if [ -n "$PLUGIN_FILE" ] && ! backup "$PLUGIN_FILE" "$tx/plugin"; then
		rm -rf "$tx"
		fail "cannot back up ${PLUGIN_FILE#"$R"}"
	fi
	if ! backup_dispatcher "$tx"; then
		rm -rf "$tx"
		fail "cannot back up the dispatcher files"
	fi
	TX=$tx
}

end_tx() { rm -rf "$TX"; TX=""; }

rollback() {
	ROLLBACK_ERR=""
	restore "$RULES_D/$RULES_FILE" rules || ROLLBACK_ERR="rules file not restored; "
	if [ -n "$PLUGIN_FILE" ]; then
		restore "$PLUGIN_FILE" plugin || ROLLBACK_ERR="${ROLLBACK_ERR}plugin config not restored; "
	fi
	restore_dispatcher || ROLLBACK_ERR="${ROLLBACK_ERR}dispatcher files not restored; "
	if command -v augenrules >/dev/null 2>&1; then
		load_rules || ROLLBACK_ERR="${ROLLBACK_ERR}previous rules did not load ($LOAD_ERR); "
	fi
	if [ "$PLUGIN_CHANGED" = yes ]; then
		reread_plugins || ROLLBACK_ERR="${ROLLBACK_ERR}auditd not running; "
	else
		read_status
		if [ "$AUDITD_PID" = 0 ]; then
			start_auditd || ROLLBACK_ERR="${ROLLBACK_ERR}auditd not running; "
		fi
	fi
	rm -rf "$TX"
	TX=""
	[ -z "$ROLLBACK_ERR" ]
}

# The plugin config as this host had it before nodeaudit first changed it, for --remove.
save_original_plugin() {
	orig="$STATE_DIR/orig-syslog-$PLUGIN_KEY.conf"
	if [ -e "$orig" ] || [ -e "$orig.absent" ]; then
		return 0
	fi
	if [ -e "$PLUGIN_FILE" ]; then
		cp -pP "$PLUGIN_FILE" "$orig.tmp" && mv -f "$orig.tmp" "$orig"
	else
		: >"$orig.absent"
	fi
}

# A rule already loaded from another file (a foreign 10-procmon.rules from the manual procedure,
# another policy's shared excludes) makes the kernel answer "Rule exists". That is harmless when
# loading continued past it (a `-c` line in the rules); verification then decides.
only_duplicates() {
	errors=$(printf '%s\n' "$1" | grep -c 'There was an error in line')
	dups=$(printf '%s\n' "$1" | grep -c 'Rule exists')
	[ "$errors" -gt 0 ] && [ "$errors" -eq "$dups" ]
}

# Loads rules.d into the kernel, for apply, remove and rollback alike; augenrules' output goes to
# stderr. A failure made only of duplicates (above) counts as loaded. Otherwise 1, and LOAD_ERR
# holds the exit status and the telling lines for the message.
load_rules() {
	LOAD_ERR=""
	log "augenrules --load"
	out=$(augenrules --load 2>&1)
	lrc=$?
	printf '%s\n' "$out" >&2
	[ "$lrc" -eq 0 ] && return 0
	only_duplicates "$out" && return 0
	# Without the duplicates: auditctl follows each error with "There was an error in line N".
	lines=$(printf '%s\n' "$out" | sed '/Rule exists/{N;d;}' | grep -Ei 'error|invalid|unknown|no such' |
		grep -v 'Rule exists' | head -n 3 | tr '\n' ' ' | sed 's/ *$//')
	LOAD_ERR="augenrules --load exit $lrc${lines:+: $lines}"
	return 1
}

lock_host() {
	mkdir -p "$R/run/lock" 2>/dev/null
	command -v flock >/dev/null 2>&1 || { log "flock missing: running without the host lock"; return 0; }
	# Jobs of two policies can land on one node at once; they share the plugin config and augenrules.
	# `command`: a failed redirection on the special builtin exec would exit the shell (dash: rc 2,
	# no result line). The braces keep 2>/dev/null from becoming permanent with the exec.
	{ command exec 9>"$R/run/lock/nodeaudit-apply.lock"; } 2>/dev/null || {
		log "cannot open $R/run/lock/nodeaudit-apply.lock: running without the host lock"
		return 0
	}
	flock -w 600 9 || fail "another nodeaudit apply held the host lock for 600s"
	LOCKED=yes
}

# ---------------------------------------------------------------------------------------------
# JSON dispatcher (syslog.format json): an auditd plugin run by the node's python3 in place of
# audisp-syslog (whose syslog.conf stays, inactive, where the distro put it). Its files live in
# DISPATCHER_DIR; it writes its counters to DISPATCHER_STATE (both set in the header).

forwarder_name() { if [ -n "$DPLUGIN_SRC" ]; then echo "nodeaudit dispatcher"; else echo "syslog plugin"; fi; }

# json needs python3 >= 3.8; without it the raw path runs and the result line says why.
choose_format() {
	if [ "$SYSLOG" != yes ]; then
		SYSLOG_FORMAT=raw
		return 0
	fi
	if [ "$SYSLOG_FORMAT" = json ]; then
		py=$(command -v python3 2>/dev/null) || py=""
		if [ -z "$py" ]; then
			FALLBACK="python3 not found: audit records go to syslog raw through audisp-syslog"
		elif ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 8))' </dev/null >/dev/null 2>&1; then
			FALLBACK="python3 older than 3.8: audit records go to syslog raw through audisp-syslog"
		fi
		if [ -n "$FALLBACK" ]; then
			log "$FALLBACK"
			SYSLOG_FORMAT=raw
		fi
	fi
	if [ "$SYSLOG_FORMAT" = raw ]; then
		# A raw bundle where the dispatcher ran: the last applied policy decides, as it does for
		# syslog.conf, so its config goes (backed up by the transaction, restored by rollback).
		[ -e "$(dirname "$PLUGIN_FILE")/nodeaudit.conf" ] && DPLUGIN_FILE="$(dirname "$PLUGIN_FILE")/nodeaudit.conf"
		return 0
	fi
	# auditd runs `path` itself: the real file, absolute, not a symlink.
	PYTHON3=$(readlink -f "$py" 2>/dev/null) || PYTHON3=""
	case $PYTHON3 in /*) ;; *) PYTHON3=$py ;; esac
	case $PYTHON3 in /*) ;; *) fail "python3 is not an absolute path: $PYTHON3" ;; esac
	case $PYTHON3 in *[!A-Za-z0-9._/+-]*) fail "python3 path $PYTHON3 has characters a plugin config cannot hold" ;; esac
	PLUGIN_SRC="$BUNDLE_DIR/syslog-off-$PLUGIN_KEY.conf"
	DPLUGIN_FILE="$(dirname "$PLUGIN_FILE")/nodeaudit.conf"
	{ mkdir -p "$STATE_DIR" && chmod 0700 "$STATE_DIR"; } || fail "cannot create $STATE_DIR"
	DPLUGIN_SRC="$STATE_DIR/nodeaudit-plugin-$PLUGIN_KEY.conf"
	sed "s|@PYTHON3@|$PYTHON3|" "$BUNDLE_DIR/dispatcher-$PLUGIN_KEY.conf" >"$DPLUGIN_SRC" ||
		fail "cannot write $DPLUGIN_SRC"
}

dispatcher_right() {
	[ -n "$DPLUGIN_FILE" ] || return 0
	if [ -z "$DPLUGIN_SRC" ]; then
		[ ! -e "$DPLUGIN_FILE" ]
		return
	fi
	file_right "$DPLUGIN_SRC" "$DPLUGIN_FILE" || return 1
	file_right "$BUNDLE_DIR/dispatcher.json" "$DISPATCHER_DIR/config.json" || return 1
	for f in $DISPATCHER_FILES; do
		file_right "$BUNDLE_DIR/$f" "$DISPATCHER_DIR/$f" || return 1
	done
}

backup_dispatcher() { # txdir
	[ -n "$DPLUGIN_FILE" ] || return 0
	backup "$DPLUGIN_FILE" "$1/dplugin" || return 1
	backup "$DISPATCHER_DIR/config.json" "$1/dconfig" || return 1
	for f in $DISPATCHER_FILES; do
		backup "$DISPATCHER_DIR/$f" "$1/d-$f" || return 1
	done
}

restore_dispatcher() {
	[ -n "$DPLUGIN_FILE" ] || return 0
	restore "$DPLUGIN_FILE" dplugin || return 1
	mkdir -p "$DISPATCHER_DIR" || return 1
	restore "$DISPATCHER_DIR/config.json" dconfig || return 1
	for f in $DISPATCHER_FILES; do
		restore "$DISPATCHER_DIR/$f" "d-$f" || return 1
	done
}

# The code first, the plugin config last: auditd never starts a dispatcher whose files are half
# there. A running dispatcher whose code changed is stopped; the re-read that follows starts the
# new one (a changed config alone reaches it through the SIGHUP auditd passes on).
install_dispatcher() {
	[ -n "$DPLUGIN_FILE" ] || return 0
	if [ -z "$DPLUGIN_SRC" ]; then
		log "removing ${DPLUGIN_FILE#"$R"} (raw format)"
		rm -f "$DPLUGIN_FILE"
		return
	fi
	code_changed=no
	for f in $DISPATCHER_FILES; do
		file_right "$BUNDLE_DIR/$f" "$DISPATCHER_DIR/$f" && continue
		code_changed=yes
		put_file "$BUNDLE_DIR/$f" "$DISPATCHER_DIR/$f" || return 1
	done
	put_file "$BUNDLE_DIR/dispatcher.json" "$DISPATCHER_DIR/config.json" || return 1
	log "writing ${DPLUGIN_FILE#"$R"} (python3: $PYTHON3)"
	put_file "$DPLUGIN_SRC" "$DPLUGIN_FILE" || return 1
	[ "$code_changed" = no ] || stop_dispatcher
	return 0
}

# The running dispatcher's pid from its state file, signalled only when that pid really is it.
stop_dispatcher() {
	pid=$(sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p' "$DISPATCHER_STATE" 2>/dev/null | head -n 1)
	[ -n "$pid" ] || return 0
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "/var/lib/nodeaudit/dispatcher/dispatcher.py" || return 0
	log "stopping the old dispatcher (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
}

# --remove of the last nodeaudit policy: the dispatcher goes with the syslog.conf it replaced.
remove_dispatcher() {
	f="$(dirname "$PLUGIN_FILE")/nodeaudit.conf"
	[ -e "$f" ] || [ -d "$DISPATCHER_DIR" ] || return 0
	log "removing the dispatcher"
	rm -f "$f" && rm -rf "$DISPATCHER_DIR"
}

# The dispatcher's counters as a JSON object for the result line; null where it never ran.
dispatcher_counters() {
	if [ ! -r "$DISPATCHER_STATE" ]; then
		printf 'null'
		return 0
	fi
	out=""
	for k in events dropped unparsed containersResolved containersUnresolved hostProcesses; do
		v=$(sed -n "s/.*\"$k\": *\([0-9][0-9]*\).*/\1/p" "$DISPATCHER_STATE" 2>/dev/null | head -n 1)
		out="$out${out:+, }\"$k\": ${v:-0}"
	done
	printf '{%s}' "$out"
}

# ---------------------------------------------------------------------------------------------
# Apply

apply() {
	if ! auditd_present; then
		install_auditd
		auditd_present || fail "auditd still missing after installing it"
	fi
	detect_audit_version
	[ "$SYSLOG" = yes ] || { PLUGIN_FILE=""; }
	choose_format

	read_status
	count_loaded
	rules_ok=no
	file_right "$BUNDLE_DIR/$RULES_FILE" "$RULES_D/$RULES_FILE" && rules_ok=yes
	load_needed=yes
	[ "$rules_ok" = yes ] && [ -z "$MISSING" ] && load_needed=no
	plugin_ok=yes
	if [ -n "$PLUGIN_FILE" ] && ! file_right "$PLUGIN_SRC" "$PLUGIN_FILE"; then
		plugin_ok=no
	fi
	dispatcher_right || plugin_ok=no
	if [ "$load_needed" = yes ] && [ "$ENABLED" = 2 ]; then
		fail "kernel audit rules are immutable (enabled 2) until reboot: cannot load this policy's rules"
	fi

	if [ "$load_needed" = yes ] || [ "$plugin_ok" = no ]; then
		begin_tx
		if [ "$rules_ok" = no ]; then
			log "writing $RULES_FILE"
			put_file "$BUNDLE_DIR/$RULES_FILE" "$RULES_D/$RULES_FILE" || fail "cannot write $RULES_D/$RULES_FILE"
		fi
		if [ "$plugin_ok" = no ]; then
			save_original_plugin || fail "cannot save the original plugin config"
			log "writing ${PLUGIN_FILE#"$R"}"
			PLUGIN_CHANGED=yes
			put_file "$PLUGIN_SRC" "$PLUGIN_FILE" || fail "cannot write ${PLUGIN_FILE#"$R"}"
			install_dispatcher || fail "cannot install the dispatcher in ${DISPATCHER_DIR#"$R"}"
		fi
		if [ "$load_needed" = yes ]; then
			load_rules || fail "the kernel refused the rules ($LOAD_ERR)"
		fi
	fi

	read_status
	if [ "$PLUGIN_CHANGED" = yes ]; then
		reread_plugins || fail "auditd did not come up after the plugin change"
	elif [ "$AUDITD_PID" = 0 ]; then
		start_auditd || fail "auditd is not running and could not be started"
	elif [ -n "$PLUGIN_FILE" ] && [ "$PLUGIN_KEY" = v3 ] && ! plugin_running; then
		# Config right but the plugin is gone (exhausted max_restarts, killed): start it again.
		log "syslog plugin not running"
		reread_plugins || fail "auditd did not come up after restarting the plugin"
	fi

	# Last, because starting or restarting auditd reloads audit.rules with the distro's values.
	apply_queue_settings || fail "the kernel refused the policy's queue settings (-b/-r/--backlog_wait_time)"
	verify
	end_tx
	canary_send
	if [ "$load_needed" = no ] && [ "$plugin_ok" = yes ] && [ "$QUEUE_CHANGED" = no ] && [ "$RESTARTED" = false ] && [ "$INSTALLED" = false ]; then
		emit true "already applied"
	else
		emit true "applied"
	fi
}

# augenrules keeps the last -b/-r/--backlog_wait_time it reads, and the distro's own rules file
# (audit.rules: -b 8192, --backlog_wait_time 60000) sorts after ours, and (re)starting auditd loads
# it again; so the policy's queue settings are set directly, after everything else. After a reboot the distro's values win until the
# operator's next Job (a new bootID always gets one) puts them back.
apply_queue_settings() {
	st=$(auditctl -s 2>/dev/null) || return 0
	while read -r flag value rest; do
		[ -z "$rest" ] || continue
		case $flag in
			-b) key=backlog_limit ;;
			-r) key=rate_limit ;;
			--backlog_wait_time) key=backlog_wait_time ;;
			*) continue ;;
		esac
		case $value in '' | *[!0-9]*) continue ;; esac
		now=$(printf '%s\n' "$st" | sed -n "s/^$key \([0-9]*\).*/\1/p")
		[ "$now" = "$value" ] && continue
		log "auditctl $flag $value (was ${now:-unset})"
		auditctl "$flag" "$value" >/dev/null 2>&1 9>&- || return 1
		QUEUE_CHANGED=yes
	done <"$BUNDLE_DIR/$RULES_FILE"
	return 0
}

verify() {
	read_status
	[ "$AUDITD_PID" != 0 ] || fail "verification: auditd is not running"
	count_loaded
	[ -z "$MISSING" ] || fail "verification: rule not loaded: $MISSING"
	file_right "$BUNDLE_DIR/$RULES_FILE" "$RULES_D/$RULES_FILE" || fail "verification: $RULES_FILE not in place"
	if [ -n "$PLUGIN_FILE" ]; then
		file_right "$PLUGIN_SRC" "$PLUGIN_FILE" || fail "verification: plugin config ${PLUGIN_FILE#"$R"} not as the bundle has it"
		dispatcher_right || fail "verification: the dispatcher files are not as the bundle has them"
		if [ "$PLUGIN_KEY" = v3 ] && plugin_wanted; then
			wait_plugin 3 || fail "verification: $(forwarder_name) process not running under auditd"
		fi
	fi
}

# ---------------------------------------------------------------------------------------------
# Canary: one audit event per apply that travels the policy's own way (kernel -> auditd -> the
# syslog plugin or the JSON dispatcher -> syslog -> the agent -> Log Analytics), so the operator
# can ask the workspace whether it arrived. A user message (auditctl -m, record type USER) passes
# the kernel's user filter and no volume level excludes USER; the marker names node, bundle and
# time, so it is unique and never confused with other authpriv traffic.

canary_node() { # the node's name: NODE_NAME (the Job sets it from spec.nodeName), else uname -n
	n=${NODE_NAME:-$(uname -n 2>/dev/null)}
	case $n in '' | *[!A-Za-z0-9._-]*) n=unknown ;; esac
	printf '%s' "$n"
}

canary_send() {
	CANARY_AT=$(date +%s)
	hex=${BUNDLE#sha256:}
	# node:bundle:time-pid: the pid keeps two applies in the same second apart
	CANARY_ID="$(canary_node):$(printf '%.12s' "$hex"):$CANARY_AT-$$"
	if ! auditctl -m "nodeaudit-canary id=$CANARY_ID policy=$POLICY" >/dev/null 2>&1 9>&-; then
		log "canary: auditctl -m refused"
		CANARY_ID=""
		CANARY_AT=0
		return 0
	fi
	canary_wait 3 || log "canary $CANARY_ID: not seen after the audit pipeline on this node (last seen: $CANARY_SEEN)"
}

# Where did the canary show up after the kernel? The dispatcher's event counter (JSON path), the
# journal or a syslog file (it left the audit pipeline), else auditd's own log (it reached auditd
# only). A canary that is not seen is reported, not fatal: the workspace check decides.
canary_seen_at() {
	# the JSON dispatcher's state file names the last canary it sent to /dev/log
	if [ -r "$DISPATCHER_STATE" ] && grep -qF "\"lastCanary\": \"$CANARY_ID\"" "$DISPATCHER_STATE" 2>/dev/null; then
		echo dispatcher; return 0
	fi
	if [ -z "$R" ] && command -v journalctl >/dev/null 2>&1 \
		&& journalctl -q --no-pager -o cat --since "@$CANARY_AT" 2>/dev/null | grep -qF "$CANARY_ID"; then
		echo journal; return 0
	fi
	for f in auth.log secure syslog messages; do
		if [ -r "$R/var/log/$f" ] && tail -c 4000000 "$R/var/log/$f" 2>/dev/null | grep -qF "$CANARY_ID"; then
			echo syslog; return 0
		fi
	done
	if [ -r "$R/var/log/audit/audit.log" ] && tail -c 4000000 "$R/var/log/audit/audit.log" 2>/dev/null | grep -qF "$CANARY_ID"; then
		echo auditd; return 0
	fi
	echo none
}

canary_left_audit() {
	CANARY_SEEN=$(canary_seen_at)
	case $CANARY_SEEN in dispatcher | journal | syslog) return 0 ;; esac
	return 1
}

# Is there anything on this node that would show the canary after auditd? (journald, a syslog
# file, the dispatcher's counter). Without one, waiting for it is pointless: auditd's log only.
canary_sink() {
	[ -e "$DISPATCHER_STATE" ] && return 0
	[ -z "$R" ] && [ -d /run/systemd/journal ] && command -v journalctl >/dev/null 2>&1 && return 0
	for f in auth.log secure syslog messages; do
		[ -e "$R/var/log/$f" ] && return 0
	done
	return 1
}

canary_wait() { # seconds
	n=$(($1 * 5))
	canary_sink || n=5
	while [ "$n" -gt 0 ]; do
		canary_left_audit && return 0
		canary_sink || { [ "$CANARY_SEEN" = auditd ] && return 1; }
		sleep 0.2
		n=$((n - 1))
	done
	return 1
}

# ---------------------------------------------------------------------------------------------
# Remove

remove() {
	if ! auditd_present; then
		emit true "auditd not installed: nothing to remove"
		exit 0
	fi
	detect_audit_version
	others=no
	for f in "$RULES_D"/60-nodeaudit-*.rules; do
		[ -e "$f" ] || continue
		[ "$(basename "$f")" = "$RULES_FILE" ] || others=yes
	done
	orig="$STATE_DIR/orig-syslog-$PLUGIN_KEY.conf"
	restore_plugin=no
	if [ "$others" = no ] && { [ -e "$orig" ] || [ -e "$orig.absent" ]; }; then
		restore_plugin=yes
	fi
	[ "$restore_plugin" = yes ] || PLUGIN_FILE=""
	if [ ! -e "$RULES_D/$RULES_FILE" ] && [ "$restore_plugin" = no ]; then
		read_status
		emit true "nothing to remove"
		exit 0
	fi
	read_status
	[ "$ENABLED" != 2 ] || fail "kernel audit rules are immutable (enabled 2) until reboot: cannot remove"
	if [ "$restore_plugin" = yes ] && [ -e "$(dirname "$PLUGIN_FILE")/nodeaudit.conf" ]; then
		DPLUGIN_FILE="$(dirname "$PLUGIN_FILE")/nodeaudit.conf"  # backed up with the rest
	fi
	begin_tx
	rm -f "$RULES_D/$RULES_FILE" || fail "cannot delete $RULES_D/$RULES_FILE"
	if [ "$restore_plugin" = yes ]; then
		PLUGIN_CHANGED=yes
		remove_dispatcher || fail "cannot remove the dispatcher"
		if [ -e "$orig.absent" ]; then
			rm -f "$PLUGIN_FILE" || fail "cannot delete ${PLUGIN_FILE#"$R"}"
		else
			tmp="$(dirname "$PLUGIN_FILE")/.nodeaudit-$$.tmp"
			{ cp -pP "$orig" "$tmp" && mv -f "$tmp" "$PLUGIN_FILE"; } || fail "cannot restore ${PLUGIN_FILE#"$R"}"
		fi
	fi
	load_rules || fail "the remaining rules did not load ($LOAD_ERR)"
	if [ "$restore_plugin" = yes ]; then
		reread_plugins || fail "auditd did not come up after restoring the plugin config"
	fi
	read_status
	[ "$AUDITD_PID" != 0 ] || start_auditd || fail "auditd is not running"
	end_tx
	if [ "$restore_plugin" = yes ]; then
		rm -f "$orig" "$orig.absent"
	fi
	count_loaded
	emit true "removed$([ "$restore_plugin" = yes ] && echo '; plugin config restored')"
}

# ---------------------------------------------------------------------------------------------
# Main

main() {
	case "${1:-}" in
		'') ;;
		--remove) ACTION=remove ;;
		*) echo "usage: sh apply.sh [--remove]" >&2; exit 2 ;;
	esac
	trap 'fail "interrupted by a signal"' INT TERM HUP
	[ "$(id -u)" = 0 ] || fail "must run as root"
	read_env
	detect_distro
	lock_host
	if [ "$ACTION" = remove ]; then
		remove
	else
		apply
	fi
	exit 0
}

main "$@"
