-- wrk script for bench/run.sh's `dpop` section: every request carries the next unused DPoP
-- proof of this thread's file and the access token bound to the proof's key:
--   Authorization: DPoP <token>
--   DPoP: <proof>
--   wrk -s bench/dpop.lua URL -- PROOFS_PREFIX TOKENS_FILE
-- Thread k reads PROOFS_PREFIX.k (lines "I PROOF", bench/dpop_proofs.py) and the tokens
-- file (line I: the token bound to key I). A proof is sent at most once (a reused `jti` is
-- refused as a replay): when a thread runs out, it sends the token without a proof, which
-- Portcullis answers 401, so the row shows non-2xx answers and `done` says how many.
local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

local auth = {}
local key = {}
local proofs = {}
local n = 0
used = 0
exhausted = 0

function init(args)
  local prefix = args[1] or error("usage: wrk -s dpop.lua URL -- PROOFS_PREFIX TOKENS_FILE")
  local tokens = args[2] or error("usage: wrk -s dpop.lua URL -- PROOFS_PREFIX TOKENS_FILE")
  for line in io.lines(tokens) do
    if #line > 0 then
      auth[#auth + 1] = "DPoP " .. line
    end
  end
  for line in io.lines(prefix .. "." .. thread_index) do
    local i, proof = line:match("^(%d+) (%S+)$")
    if i then
      n = n + 1
      key[n] = auth[tonumber(i)] or error("proof for key " .. i .. " but no such token")
      proofs[n] = proof
    end
  end
  if n == 0 then
    error("no proofs in " .. prefix .. "." .. thread_index)
  end
end

function request()
  if used < n then
    used = used + 1
    wrk.headers["Authorization"] = key[used]
    wrk.headers["DPoP"] = proofs[used]
    proofs[used] = nil -- never again, and the memory back
  else
    exhausted = exhausted + 1
    wrk.headers["DPoP"] = nil
  end
  return wrk.format()
end

function done(summary, latency, requests)
  local u, e = 0, 0
  for _, t in ipairs(threads) do
    u = u + t:get("used")
    e = e + t:get("exhausted")
  end
  io.write(string.format("dpop: proofs used %d, requests without a proof %d\n", u, e))
end
