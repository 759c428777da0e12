-- POSTs varied valid flights to /v1/prediction and prints one JSON summary line when done.
--   wrk -t4 -c200 -d45s -s loadtest/script.lua http://127.0.0.1:3000/v1/prediction
--   FLIGHTS_PER_REQUEST=10 FLIGHTS_FILE=loadtest/flights.jsonl wrk ... (defaults: 1, loadtest/flights.jsonl)
-- Bodies are pre-built in init() from the pool of flights (one JSON object per line; the first ones
-- are EXAMPLE_REQUEST's flights, {"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":3},{"OPERA":"Sky Airline","TIPOVUELO":"I","MES":7,"Fecha-I":"2017-07-21 19:40","SIGLADES":"Lima"}]}).
-- response() counts every non-2xx answer (3xx included, which wrk's own error count leaves out),
-- and apart from them the 503s of load shedding and any other 5xx.

local threads = {}
local bodies = {}
local next_body = 1
non_2xx = 0
shed = 0
server_errors = 0

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local path = os.getenv("FLIGHTS_FILE") or "loadtest/flights.jsonl"
   local per_request = tonumber(os.getenv("FLIGHTS_PER_REQUEST") or "1")
   local file = assert(io.open(path, "r"), "cannot read " .. path)
   local pool = {}
   for line in file:lines() do
      if line ~= "" then table.insert(pool, line) end
   end
   file:close()
   for first = 1, #pool do
      local flights = {}
      for k = 0, per_request - 1 do
         table.insert(flights, pool[(first + k - 1) % #pool + 1])
      end
      table.insert(bodies, '{"flights":[' .. table.concat(flights, ",") .. ']}')
   end
   next_body = math.random(#bodies)
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end

function request()
   next_body = next_body % #bodies + 1
   return wrk.format(nil, nil, nil, bodies[next_body])
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non_2xx = non_2xx + 1
      if status == 503 then
         shed = shed + 1
      elseif status >= 500 then
         server_errors = server_errors + 1
      end
   end
end

function done(summary, latency, requests)
   local not_ok, shed_total, server_total = 0, 0, 0
   for _, thread in ipairs(threads) do
      not_ok = not_ok + thread:get("non_2xx")
      shed_total = shed_total + thread:get("shed")
      server_total = server_total + thread:get("server_errors")
   end
   local seconds = summary.duration / 1e6
   local e = summary.errors
   io.write(string.format(
      '{"requests":%d,"duration_s":%.3f,"requests_per_s":%.1f,' ..
      '"latency_ms":{"mean":%.3f,"p50":%.3f,"p90":%.3f,"p99":%.3f,"p99_9":%.3f,"max":%.3f},' ..
      '"non_2xx":%d,"status_503":%d,"status_5xx_other":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d}}\n',
      summary.requests, seconds, summary.requests / seconds,
      latency.mean / 1e3, latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
      latency:percentile(99) / 1e3, latency:percentile(99.9) / 1e3, latency.max / 1e3,
      not_ok, shed_total, server_total, e.connect, e.read, e.write, e.timeout, e.status))
end
