#!/bin/sh
# Set up what klpcc needs on a Debian 12 machine with Python 3.11, idempotently:
# system packages (when root), a virtualenv in .venv, klpcc installed in it.
set -eu
cd "$(dirname "$0")/.."

need=""
for tool in gcc make git patch; do
	command -v "$tool" >/dev/null 2>&1 || need="$need $tool"
done
if [ -n "$need" ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "bootstrap: installing$need with apt-get"
		apt-get update -qq
		# shellcheck disable=SC2086
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(echo "$need" | sed 's/gcc/gcc libc6-dev/') >/dev/null
	else
		echo "bootstrap: please install:$need" >&2
		exit 1
	fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
	if ! "$PY" -m venv .venv; then
		rm -rf .venv
		if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
			echo "bootstrap: installing python3-venv with apt-get"
			apt-get update -qq
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
			"$PY" -m venv .venv
		else
			echo "bootstrap: '$PY -m venv' failed; on Debian: apt-get install python3-venv" >&2
			exit 1
		fi
	fi
fi
# the object-level test compiles a real C extension: it needs the Python headers
inc=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
if [ ! -f "$inc/Python.h" ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "bootstrap: installing python3-dev with apt-get"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-dev >/dev/null
	else
		echo "bootstrap: note: $inc/Python.h is missing (apt-get install python3-dev);" \
			"the object-level test on a real C extension needs it" >&2
	fi
fi

stamp=.venv/.klpcc-installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
	.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	.venv/bin/python -m pip install -q -e '.[test]'
	echo "$want" > "$stamp"
fi
