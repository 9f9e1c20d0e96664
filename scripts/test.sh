#!/usr/bin/env bash
# Run the test suite against a real Kafka broker: the local one is started here if it is not running, and
# stopped again afterwards if this script started it. Extra arguments go to pytest (e.g. -m slow, -k name).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${EXPLORER_VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"

started_broker=0
stop_broker() {
  if [ "$started_broker" = 1 ]; then explorer broker stop; fi
}
trap stop_broker EXIT

if ! explorer broker status >/dev/null 2>&1; then
  explorer broker start
  started_broker=1
fi

python -m pytest -m "not slow" "$@"
