-- siftbench: print wrk's latency percentile curve (microseconds) and error
-- counts after the run, one "SIFTBENCH key value" line each, for the harness.
done = function(summary, latency, requests)
  local ps = {0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100}
  for _, p in ipairs(ps) do
    -- wrk answers 0 for percentile(100): the maximum is latency.max
    local v = latency:percentile(p)
    if p == 100 then v = latency.max end
    io.write(string.format("SIFTBENCH p%g %d\n", p, v))
  end
  io.write(string.format("SIFTBENCH requests %d\n", summary.requests))
  io.write(string.format("SIFTBENCH duration_us %d\n", summary.duration))
  local e = summary.errors
  io.write(string.format("SIFTBENCH errors %d\n", e.connect + e.read + e.write + e.status + e.timeout))
end
