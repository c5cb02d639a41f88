-- One provisioning-quota decision (GCRA), atomic in Redis.
--
-- KEYS[1]  the token's bucket        ARGV[1] its interval in microseconds
--                                    ARGV[2] its burst
-- KEYS[2]  the tenant's bucket       ARGV[3] its interval in microseconds
--                                    ARGV[4] its burst
--
-- A bucket's state is its theoretical arrival time (TAT, microseconds on
-- Redis's clock): a request is admitted when TAT - now <= (burst - 1) *
-- interval, and admitting it moves TAT on by one interval. A missing key is
-- a full bucket. The token is judged first and nothing is written unless
-- both admit, so a token over its own quota never spends its tenant's, and
-- a refused request spends neither.
--
-- Returns {0, 0} when admitted, {1, wait} when the token's bucket refused
-- and {2, wait} when the tenant's did; wait is the microseconds until the
-- refusing bucket holds one request again (at least 1).

-- Redis before 5 replicates scripts verbatim and refuses writes after a
-- non-deterministic command such as TIME unless told to replicate effects;
-- from 5 on this is the default, and 7 keeps the call as a no-op.
if redis.replicate_commands then
  redis.replicate_commands()
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- The TAT after admitting one request, or nil and the wait when refused.
local function admit(key, interval, burst)
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then
    tat = now
  end
  local wait = tat - (burst - 1) * interval - now
  if wait > 0 then
    return nil, wait
  end
  return tat + interval, 0
end

-- The bucket is full again, and its key worthless, once TAT has passed.
local function store(key, tat)
  local ttl_ms = math.max(1, math.ceil((tat - now) / 1000))
  redis.call('SET', key, string.format('%.3f', tat), 'PX', ttl_ms)
end

local token_tat, token_wait = admit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
if not token_tat then
  return {1, math.max(1, math.ceil(token_wait))}
end
local tenant_tat, tenant_wait = admit(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
if not tenant_tat then
  return {2, math.max(1, math.ceil(tenant_wait))}
end
store(KEYS[1], token_tat)
store(KEYS[2], tenant_tat)
return {0, 0}
