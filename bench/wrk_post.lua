-- wrk script: POST a JSON body and report the run as one JSON line.
-- BENCH_BODY: the request body; BENCH_HEADERS: extra headers, "name: value" per line.
-- Everything is read once here, so each request costs wrk nothing extra, unless the body
-- holds bench/bodies.py's MARK: then each request numbers it afresh (BENCH_SALT, a
-- counter; the same width, so the same length).
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"model":"bench-model","messages":[]}'
wrk.headers["Content-Type"] = "application/json"
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^%s*([^:]+):%s*(.-)%s*$")
  if name then wrk.headers[name] = value end
end

local mark = "@@BENCH_UNIQUE@@"
local at = string.find(wrk.body, mark, 1, true)
if at then
  local head, tail = string.sub(wrk.body, 1, at - 1), string.sub(wrk.body, at + #mark)
  local salt, n = os.getenv("BENCH_SALT") or "000000", 0
  function request()
    n = n + 1
    return wrk.format(nil, nil, nil, head .. salt .. string.format("%010d", n) .. tail)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
