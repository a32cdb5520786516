# shellcheck shell=sh
# Functions apply.sh and job-entry.sh share, sourced by both (`. DIR/lib.sh`); it defines functions
# only and runs nothing. It ships in every bundle beside them: job-entry.sh sources it from the
# bundle ConfigMap (/bundle), apply.sh from the bundle's copy on the host.

# JSON string body: printable ASCII only, so tool output of any locale cannot break the line.
# Shortened before escaping: a cut through an escape (between \ and ") would end the string in a
# lone backslash and break the line.
json_str() {
	printf '%s' "$1" | tr '\n\t\r' '   ' | tr -cd ' -~' | cut -c1-600 | sed 's/\\/\\\\/g; s/"/\\"/g'
}

# bundle.env is parsed, never sourced, so nothing a policy says ever becomes shell text: calls
# `HANDLER KEY VALUE` for each KEY=value line of FILE (blank and # lines skipped), in the current
# shell, so the handler may set variables or exit; stops with 1 at the first handler that fails.
read_bundle_env() { # file handler
	while IFS='=' read -r k v || [ -n "$k" ]; do
		case $k in '' | '#'*) continue ;; esac
		"$2" "$k" "$v" || return 1
	done <"$1"
}

# The child pids of a process, separated by white space. /proc/PID/task/PID/children needs a kernel with
# CONFIG_PROC_CHILDREN; without it every /proc/*/stat is read for its parent pid.
children() { # pid
	kids=$(cat "/proc/$1/task/$1/children" 2>/dev/null) || kids=""
	[ -n "$kids" ] && { printf '%s\n' "$kids"; return 0; }
	parent=$1
	for s in /proc/[0-9]*/stat; do
		st=$(cat "$s" 2>/dev/null) || continue
		# after "pid (comm) ": state, then the parent pid
		st=${st##*) }
		# shellcheck disable=SC2086 # split on purpose: stat is space-separated fields
		set -- $st _ _
		[ "$2" = "$parent" ] && { p=${s#/proc/}; printf '%s\n' "${p%/stat}"; }
	done
	return 0
}
