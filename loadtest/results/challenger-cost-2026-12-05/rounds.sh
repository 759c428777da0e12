#!/bin/bash
# What a challenger costs the champion (issue 28), paired: the same code and champion on :3001 without a
# challenger and on :3002 with one, both `bentoml serve service:FlightDelay` with 2 workers, measured in
# alternating rounds (each while the other idles). HOME_DIR: a store with the champion (CHAMPION) and a
# challenger (CHALLENGER) train.py fitted with --min-flights 200, so it knows fewer values and re-encodes
# every flight (the costlier path). 2026-12-05, 2 shared cores.
cd "$(git rev-parse --show-toplevel)"
out=${OUT:-$(dirname "$0")/rounds.txt}; : > "$out"
common="BENTOML_HOME=$HOME_DIR FLIGHT_DELAY_MODEL=$CHAMPION FLIGHT_DELAY_LOG_SAMPLE=0.01"
env $common setsid .venv/bin/python -m bentoml serve service:FlightDelay --port 3001 >/tmp/cost-3001.log 2>&1 &
env $common FLIGHT_DELAY_CHALLENGER=$CHALLENGER setsid .venv/bin/python -m bentoml serve service:FlightDelay \
  --port 3002 >/tmp/cost-3002.log 2>&1 &
for port in 3001 3002; do until curl -sf localhost:$port/readyz >/dev/null; do sleep 1; done; done
run() { # name port args...
  local name=$1 port=$2; shift 2
  r=$(wrk "$@" -s loadtest/script.lua http://127.0.0.1:$port/v1/prediction 2>&1)
  rps=$(echo "$r" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$r" | awk '/ 50%/ {print $2}')
  p99=$(echo "$r" | awk '/ 99%/ {print $2}')
  err=$(echo "$r" | grep -E "Socket errors|Non-2xx" | tr '\n' ' ')
  echo "$name port=$port rps=$rps p50=$p50 p99=$p99 $err" >> "$out"
}
open_loop() { # name port
  r=$(.venv/bin/python -m loadtest.open_loop point --url http://127.0.0.1:$2 --rate 2300 --duration 15 --warmup 3 \
      --name "challenger-cost-$2" --overwrite 2>&1 | grep -E "req/s|p99" | tail -1)
  echo "$1 port=$2 $r" >> "$out"
}
for port in 3001 3002; do wrk -t4 -c200 -d5s -s loadtest/script.lua http://127.0.0.1:$port/v1/prediction >/dev/null; done
for round in 1 2 3; do
  if [ $((round % 2)) = 1 ]; then order="3001 3002"; else order="3002 3001"; fi
  for port in $order; do run "ref-keepalive r$round" $port -t4 -c200 -d15s --latency; done
  for port in $order; do run "close-per-request r$round" $port -t4 -c64 -d15s --latency -H 'Connection: close'; done
  for port in $order; do FLIGHTS_PER_REQUEST=100 run "100-flights-c64 r$round" $port -t4 -c64 -d15s --latency; done
  for port in $order; do run "lone r$round" $port -t1 -c1 -d10s --latency; done
  for port in $order; do open_loop "open-loop-2300 r$round" $port; done
done
curl -s localhost:3002/v1/monitoring | python3 -c 'import sys,json; c=json.load(sys.stdin)["challenger"]; print("challenger at the end:", json.dumps({k: c[k] for k in ("agreement","dropped","unknown")}))' >> "$out"
pkill -f "port 3001"; pkill -f "port 3002"
echo DONE >> "$out"
