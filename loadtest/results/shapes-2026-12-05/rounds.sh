#!/bin/bash
# 3001 service default (max batch 256), 3002 service FLIGHT_DELAY_MAX_BATCH_SIZE=2048, 3003 FastAPI peer
# Started by hand before the rounds, 2026-12-05 on 2 shared cores (AMD EPYC): `bentoml serve service:FlightDelay --port 3001`,
# `FLIGHT_DELAY_MAX_BATCH_SIZE=2048 bentoml serve service:FlightDelay --port 3002`, `python -m loadtest.apps fastapi --port 3003 --workers 2`
cd "$(git rev-parse --show-toplevel)"
out=${OUT:-wrk-rounds.txt}; : > $out
run() { local name=$1 port=$2; shift 2
  r=$(wrk "$@" -s loadtest/script.lua http://127.0.0.1:$port/v1/prediction 2>&1)
  rps=$(echo "$r" | awk '/Requests\/sec/ {print $2}'); p99=$(echo "$r" | awk '/ 99%/ {print $2}')
  err=$(echo "$r" | grep -E "Socket errors|Non-2xx" | tr '\n' ' ')
  echo "$name port=$port rps=$rps p99=$p99 $err" >> $out; }
for round in 1 2; do
  for port in 3001 3002 3003; do FLIGHTS_PER_REQUEST=1000 run "1000-flights-c8 r$round" $port -t4 -c8 -d10s --latency; done
  for port in 3002 3003 3001; do FLIGHTS_PER_REQUEST=100 run "100-flights-c64 r$round" $port -t4 -c64 -d10s --latency; done
  for port in 3003 3001 3002; do run "ref-keepalive r$round" $port -t4 -c200 -d10s --latency; done
  for port in 3001 3003 3002; do run "close-c64 r$round" $port -t4 -c64 -d10s --latency -H 'Connection: close'; done
done
echo DONE >> $out
