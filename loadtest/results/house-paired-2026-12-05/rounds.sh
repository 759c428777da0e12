#!/bin/bash
# The code before a change served from a git worktree on :3001 (58cc860 for wrk-rounds.txt, b5a083a for
# batch-callback-rounds.txt) and this checkout on :3002, both `bentoml serve service:FlightDelay`; 2026-12-05, 2 shared cores
cd "$(git rev-parse --show-toplevel)"
out=${OUT:-wrk-rounds.txt}; : > $out
run() { # name port args...
  local name=$1 port=$2; shift 2
  r=$(wrk "$@" -s loadtest/script.lua http://127.0.0.1:$port/v1/prediction 2>&1)
  rps=$(echo "$r" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$r" | awk '/ 99%/ {print $2}')
  err=$(echo "$r" | grep -E "Socket errors|Non-2xx" | tr '\n' ' ')
  echo "$name port=$port rps=$rps p99=$p99 $err" >> $out
}
for round in 1 2 3; do
  for port in 3001 3002; do run "ref-keepalive r$round" $port -t4 -c200 -d15s --latency; done
  for port in 3002 3001; do run "close-per-request r$round" $port -t4 -c64 -d15s --latency -H 'Connection: close'; done
  for port in 3001 3002; do FLIGHTS_PER_REQUEST=100 run "100-flights-c64 r$round" $port -t4 -c64 -d15s --latency; done
done
echo DONE >> $out
