-- wrk: print one machine-readable line at the end (latencies in microseconds).
-- With TOKENS_FILE set, every request carries the next token of that file (Authorization: Bearer), in turn.
local tokens = nil
local file = os.getenv("TOKENS_FILE")
if file and file ~= "" then
  tokens = {}
  for line in io.lines(file) do
    if line ~= "" then tokens[#tokens + 1] = "Bearer " .. line end
  end
  local i = 0
  local path = wrk.path
  request = function()
    i = i % #tokens + 1
    wrk.headers["Authorization"] = tokens[i]
    return wrk.format(nil, path)
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors_connect=%d errors_read=%d errors_write=%d errors_status=%d errors_timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
