-- wrk script of benches/peers.sh: random single byte ranges of HEXZD_PEERS_LEN bytes, 4 KiB
-- aligned, over a resource of HEXZD_PEERS_SIZE bytes. HEXZD_PEERS_SEED varies the sequence.
local size = tonumber(os.getenv("HEXZD_PEERS_SIZE"))
local len = tonumber(os.getenv("HEXZD_PEERS_LEN"))
local slots = math.floor((size - len) / 4096)

function init(args)
  math.randomseed(tonumber(os.getenv("HEXZD_PEERS_SEED") or "1"))
end

request = function()
  local off = math.random(0, slots) * 4096
  return wrk.format("GET", nil, { ["Range"] = "bytes=" .. off .. "-" .. (off + len - 1) })
end
