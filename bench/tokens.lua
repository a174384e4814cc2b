-- wrk script for bench/run.sh's `tokens` section: every request carries the next token of
-- a file (one per line), round-robin, so each token comes back once every N requests.
--   wrk -s bench/tokens.lua URL -- TOKENS_FILE THREADS
-- Thread k starts k/THREADS of the way into the list, so threads do not send the same
-- token at the same moment.
local threads_started = 0

function setup(thread)
  thread:set("thread_index", threads_started)
  threads_started = threads_started + 1
end

local tokens = {}
local n = 0
local i = 0

function init(args)
  local file = args[1] or error("usage: wrk -s tokens.lua URL -- TOKENS_FILE [THREADS]")
  for line in io.lines(file) do
    if #line > 0 then
      n = n + 1
      tokens[n] = "Bearer " .. line
    end
  end
  if n == 0 then
    error("no tokens in " .. file)
  end
  local threads = tonumber(args[2]) or 1
  i = math.floor((thread_index or 0) * n / threads)
end

function request()
  i = i % n + 1
  wrk.headers["Authorization"] = tokens[i]
  return wrk.format()
end
