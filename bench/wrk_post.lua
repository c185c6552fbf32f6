-- wrk script: POST a small JSON body with a unique "id" per request.
-- Usage: wrk -s bench/wrk_post.lua URL -- <id-prefix>
-- Headers (Authorization, Content-Type) come from wrk's -H flags.
-- At the end it prints one line "WRKJSON {...}" that bench/run.py parses.

local threads = {}
local counter = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  prefix = args[1] or "bench"
  wrk.method = "POST"
end

function request()
  counter = counter + 1
  local body = '{"amount":1,"id":"' .. prefix .. '-' .. tid .. '-' .. counter .. '"}'
  return wrk.format("POST", nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,' ..
    '"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"lat_mean_us":%.1f,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
