#!/bin/sh
# The live part of the demo: build the shop service (fixtures/demo/live) patchable,
# start it with worker threads serving without pause, then compile, build and apply
# its four releases in turn, showing what a request sees after each one, and go back
# to the original code.  Called by scripts/demo.sh after bootstrap.
set -eu
cd "$(dirname "$0")/.."
KLPCC=$PWD/.venv/bin/klpcc
OUT=out/live
SERIES=fixtures/demo/live/patches
SRC=fixtures/demo/live/src
rm -rf "$OUT"
mkdir -p "$OUT"
make -s -C "$SRC" KLPCC="$KLPCC" O="$PWD/$OUT"
"$OUT/service" 4 250 0 >"$OUT/service.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT INT TERM

now() {
	# the service prints a tick every 250 ms: wait for one printed after this point
	n=$(wc -l <"$OUT/service.log")
	while [ "$(wc -l <"$OUT/service.log")" -le $((n + 1)) ]; do sleep 0.1; done
	grep '^tick' "$OUT/service.log" | tail -n 1 | sed "s/^/  $1: /"
}

sleep 0.6
echo "service $PID running with 4 workers"
now "original "
for r in 1 2 3 4; do
	"$KLPCC" compile "$SERIES" --source "$SRC" --release "$r" -o "$OUT/bundle$r" --force >/dev/null
	if ! "$KLPCC" build "$OUT/bundle$r" --binary "$OUT/service" -o "$OUT/release$r.so" --force \
		>"$OUT/build$r.txt" 2>&1; then
		cat "$OUT/build$r.txt" >&2
		exit 1
	fi
	"$KLPCC" apply --pid "$PID" "$OUT/release$r.so" | sed 's/^/  /'
	now "release $r"
done
"$KLPCC" status --pid "$PID" | sed 's/^/  /'
"$KLPCC" disable --pid "$PID" | sed 's/^/  /'
now "original "
echo "what the release 4 callbacks printed:"
grep '^release 4' "$OUT/service.log" | sed 's/^/  /'
