#!/bin/sh
# Runs shellcheck over every shell file of the project: tracked files named *.sh or whose first line is
# a sh/bash/dash shebang (so a new script is covered without editing a list). What runs on a node
# (operator/nodeaudit/host/) is checked as POSIX sh whatever its shebang says.
# Usage: tools/lint-shell.sh [--list]    (run from anywhere; --list prints the files only)
set -eu
cd "$(dirname "$0")/.."

list_files() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files
  else # an exported tree without .git
    find . -path ./.git -prune -o -path './.venv*' -prune -o -type f -print | sed 's|^\./||'
  fi | while IFS= read -r f; do
    [ -f "$f" ] || continue
    case "$f" in
      *.sh) echo "$f" ;;
      *) head -n 1 "$f" 2>/dev/null | grep -qE '^#! ?(/usr)?/bin/(env +)?(ba|da)?sh( |$)' && echo "$f" ;;
    esac
  done
}

files=$(list_files | sort)
if [ "${1:-}" = --list ]; then
  printf '%s\n' "$files"
  exit 0
fi
command -v shellcheck >/dev/null 2>&1 || { echo "lint-shell: shellcheck not installed (make apt-deps)" >&2; exit 2; }
status=0
count=0
for f in $files; do
  count=$((count + 1))
  case "$f" in
    operator/nodeaudit/host/*) shellcheck --severity=style -s sh -x "$f" || status=1 ;; # -x: lib.sh
    *) shellcheck --severity=style -x "$f" || status=1 ;;
  esac
done
[ "$count" -gt 0 ] || { echo "lint-shell: found no shell file: wrong directory?" >&2; exit 2; }
echo "shellcheck: $count files, $([ "$status" = 0 ] && echo clean || echo 'problems above')"
exit "$status"
