-- Requests to URL paths never seen before, for the metric-series flood drill; each thread stops after
-- its share. wrk -t2 -c20 -d120s -s loadtest/random_paths.lua http://127.0.0.1:3000 -- 50000
-- (loadtest/reliability.py path-flood runs it)
local sent, limit = 0, 0

function init(args)
  limit = tonumber(args[1]) or 50000
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

function request()
  sent = sent + 1
  if sent > limit then
    wrk.thread:stop()
  end
  return wrk.format("GET", string.format("/%x/%x", math.random(0, 2 ^ 30), sent))
end
