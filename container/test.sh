#!/usr/bin/env bash
# make container-test: run the image with --network=host, time it to /readyz, check it runs as a
# non-root user, run the HTTP contract tests and the stress test against it (and against
# `bentoml serve` on the host, for the ratio), then time a clean SIGTERM shutdown. The container is
# always stopped and removed, on failure or Ctrl-C too. The stress results go to
# loadtest/results/container-NAME/ and container-host-NAME/ (NAME: today's date unless given); it
# refuses to start if either exists, so a rerun never replaces a cited run.
#   IMAGE=flight-delay:latest PORT=3300 DURATION=45 NAME=2026-12-03 container/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-flight-delay:latest}
PORT=${PORT:-3300}
DURATION=${DURATION:-45}
CONNECTIONS=${CONNECTIONS:-200}
NAME=${NAME:-$(date +%F)}
for folder in "container-$NAME" "container-host-$NAME"; do
  [ ! -e "loadtest/results/$folder" ] || { echo "loadtest/results/$folder exists: NAME=... to write elsewhere" >&2; exit 2; }
done
name="flight-delay-test-$$"
url="http://127.0.0.1:$PORT"
PYTHON=${PYTHON:-$(command -v python3)}  # before PATH changes below
[ -x /usr/bin/docker ] && export PATH="/usr/bin:$PATH"

docker info >/dev/null 2>&1 || { echo "no Docker engine answers: see container/build.sh" >&2; exit 2; }
cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
started=$(now)
docker run -d --name "$name" --network=host -e BENTOML_PORT="$PORT" "$IMAGE" >/dev/null
until curl -sf "$url/readyz" >/dev/null; do
  if [ "$(docker inspect -f '{{.State.Running}}' "$name")" != true ]; then
    docker logs "$name" | tail -20; echo "the container stopped before it was ready" >&2; exit 1
  fi
  if (( $(echo "$(now) - $started > 90" | bc) )); then echo "not ready within 90 s" >&2; exit 1; fi
  sleep 0.1
done
ready=$(echo "$(now) - $started" | bc)
user=$(docker exec "$name" id -u)
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "[container-test] ready in ${ready} s, running as uid $user, image $((size / 1000000)) MB"
[ "$user" != 0 ] || { echo "the container runs as root" >&2; exit 1; }

FLIGHT_DELAY_URL="$url" "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_service.py tests/test_bad_input.py

"$PYTHON" -m loadtest.run --url "$url" --duration "$DURATION" --connections "$CONNECTIONS" --name "container-$NAME"
"$PYTHON" -m loadtest.run --duration "$DURATION" --connections "$CONNECTIONS" --name "container-host-$NAME"
NAME="$NAME" "$PYTHON" - <<'PY'
import json
import os
from pathlib import Path
summaries = {place: Path(f"loadtest/results/{place}-{os.environ['NAME']}/summary.json")
             for place in ("container", "container-host")}
runs = {place: json.loads(path.read_text())["runs"]["service"] for place, path in summaries.items()}
ratio = runs["container"]["requests_per_s"] / runs["container-host"]["requests_per_s"]
print(f"[container-test] container {runs['container']['requests_per_s']:,.0f} req/s, "
      f"host {runs['container-host']['requests_per_s']:,.0f} req/s: {ratio:.2f}x")
PY

stop_started=$(now)
docker stop -t 10 "$name" >/dev/null
stopped=$(echo "$(now) - $stop_started" | bc)
code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
echo "[container-test] SIGTERM: stopped in ${stopped} s, exit code $code"
[ "$code" != 137 ] || { echo "the container ignored SIGTERM and was killed" >&2; exit 1; }
