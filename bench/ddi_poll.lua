-- wrk script for bench/ddi_poll.py: every request is the next device's DDI root poll.
--
--   wrk -t2 -c64 -d20s --latency -s bench/ddi_poll.lua http://127.0.0.1:PORT -- REQUESTS_FILE
--
-- REQUESTS_FILE has one request a line: its path, then its headers, tab-separated
-- ("/default/controller/v1/dev-00001<TAB>Authorization: TargetToken …<TAB>If-None-Match: …");
-- a field starting with "=" is a body, and makes the request a PUT. All requests are built
-- once in init(); thread k starts at request k*n/threads and then takes them in turn, so the
-- threads' connections poll different devices. With "once" after the thread count, thread k
-- sends requests k, k+threads, k+2*threads, … once each, then creates the file named by the
-- next argument with its number appended (the caller then stops wrk with SIGINT; wrk itself
-- would wait out its duration). done() prints
-- one JSON line (prefixed "ddi-poll-result ") with the counts per status and the latency
-- percentiles in microseconds, for the Python side to read.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local requests = {}
local position = 1
statuses = {}

function init(args)
   local file = assert(io.open(args[1], "r"))
   for line in file:lines() do
      local path, headers, body = nil, {}, nil
      for field in string.gmatch(line, "[^\t]+") do
         if path == nil then
            path = field
         elseif string.sub(field, 1, 1) == "=" then
            body = string.sub(field, 2)
         else
            local name, value = string.match(field, "^([^:]+):%s*(.*)$")
            headers[name] = value
         end
      end
      if path ~= nil then
         table.insert(requests, wrk.format(body and "PUT" or "GET", path, headers, body))
      end
   end
   file:close()
   local total = tonumber(args[2] or "1")
   if args[3] == "once" then
      local mine = {}
      for index = id + 1, #requests, total do
         table.insert(mine, requests[index])
      end
      requests = mine
      quota = #requests
      marker = args[4] .. id
   else
      position = math.floor(id * #requests / total) + 1
   end
end

answered = 0
quota = nil
marker = nil

function request()
   local built = requests[position]
   position = position + 1
   if position > #requests then
      position = 1
   end
   return built
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   answered = answered + 1
   if quota ~= nil and answered == quota then
      local file = assert(io.open(marker, "w"))
      file:close()
   end
end

function done(summary, latency, requests)
   local counts = {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         counts[status] = (counts[status] or 0) + count
      end
   end
   local parts = {}
   for status, count in pairs(counts) do
      table.insert(parts, string.format('"%d": %d', status, count))
   end
   local errors = summary.errors
   io.write(string.format(
      'ddi-poll-result {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"statuses": {%s}, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
      '"timeouts": %d, "non_2xx_3xx": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
      '"max_us": %d, "mean_us": %.1f}\n',
      summary.requests, summary.duration, summary.bytes, table.concat(parts, ", "),
      errors.connect, errors.read, errors.write, errors.timeout, errors.status,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      latency.mean))
end
