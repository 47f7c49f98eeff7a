#!/bin/sh
# The main job on the bundled demo: analyse the kvd patch series and compile the
# cumulative patch of its last release into out/demo, after checking that it can
# replace every earlier release; its review page goes to out/demo-review.html.
set -eu
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
set -x
.venv/bin/klpcc analyze fixtures/demo/patches --source fixtures/demo/src
.venv/bin/klpcc analyze fixtures/demo/patches --source fixtures/demo/src --from 2 --release 4
.venv/bin/klpcc lint fixtures/demo/patches --source fixtures/demo/src
.venv/bin/klpcc compile fixtures/demo/patches --source fixtures/demo/src -o out/demo --force
.venv/bin/klpcc report fixtures/demo/patches --source fixtures/demo/src -o out/demo-review.html
set +x
./scripts/demo-live.sh
