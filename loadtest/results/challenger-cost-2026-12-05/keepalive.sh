#!/bin/bash
# The reference shape alone, 5 alternating rounds (after the drop counts moved into the scoring pass),
# and what the challenger drops at the open-loop headline rate (2,300 req/s), where a pod runs below
# saturation. Same servers and variables as rounds.sh. 2026-12-05, 2 shared cores.
cd "$(git rev-parse --show-toplevel)"
out=${OUT:-$(dirname "$0")/keepalive.txt}; : > "$out"
common="BENTOML_HOME=$HOME_DIR FLIGHT_DELAY_MODEL=$CHAMPION FLIGHT_DELAY_LOG_SAMPLE=0.01"
env $common setsid .venv/bin/python -m bentoml serve service:FlightDelay --port 3001 >/tmp/cost-3001.log 2>&1 &
env $common FLIGHT_DELAY_CHALLENGER=$CHALLENGER setsid .venv/bin/python -m bentoml serve service:FlightDelay \
  --port 3002 >/tmp/cost-3002.log 2>&1 &
for port in 3001 3002; do until curl -sf localhost:$port/readyz >/dev/null; do sleep 1; done; done
counts() { sleep 2.5; curl -s localhost:3002/v1/monitoring | python3 -c 'import sys,json; c=json.load(sys.stdin)["challenger"]; print("scored", c["agreement"]["flights"], "dropped", c["dropped"])'; }
echo "before open loop: $(counts)" >> "$out"
r=$(.venv/bin/python -m loadtest.open_loop point --url http://127.0.0.1:3002 --rate 2300 --duration 30 --warmup 0 \
    --name challenger-cost-drops --overwrite 2>&1 | grep -E "req/s" | tail -1)
echo "open loop 2,300 req/s 30 s: $r" >> "$out"
echo "after open loop: $(counts)" >> "$out"
for port in 3001 3002; do wrk -t4 -c200 -d5s -s loadtest/script.lua http://127.0.0.1:$port/v1/prediction >/dev/null; done
for round in 1 2 3 4 5; do
  if [ $((round % 2)) = 1 ]; then order="3001 3002"; else order="3002 3001"; fi
  for port in $order; do
    r=$(wrk -t4 -c200 -d15s --latency -s loadtest/script.lua http://127.0.0.1:$port/v1/prediction 2>&1)
    echo "ref-keepalive r$round port=$port rps=$(echo "$r" | awk '/Requests\/sec/ {print $2}') p50=$(echo "$r" | awk '/ 50%/ {print $2}') p99=$(echo "$r" | awk '/ 99%/ {print $2}') $(echo "$r" | grep -E "Socket errors|Non-2xx" | tr '\n' ' ')" >> "$out"
  done
done
pkill -f "port 3001"; pkill -f "port 3002"
echo DONE >> "$out"
