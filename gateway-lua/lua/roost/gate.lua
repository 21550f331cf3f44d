-- Roost's gate: the public entry in front of Envoy (gateway-lua/README.md).
--
-- /<function>[/...]:
--   * not in the Redis set roost:functions -> 404 JSON;
--   * ready (roost:fn:<f>:ready) -> proxied to Envoy; the ready flag lives in a shared
--     dict kept true by one roost:ready subscriber per worker, so a ready function costs
--     no Redis round trip per request (one background refresh per cache period);
--   * asleep -> woken once (SET roost:fn:<f>:waking NX PX, and only the winner PUBLISHes
--     roost:wake <f>) and held, without polling, until the worker's subscriber sees
--     {"function":"<f>","ready":true} on roost:ready and posts the function's semaphore.
--     A notice can be lost (Redis or the orchestrator restarting): while requests wait,
--     one of them per worker and function checks the ready key and re-publishes the
--     wake every ROOST_GATE_REPUBLISH_MS (the orchestrator's wake is idempotent).
--   * refused (roost:fn:<f>:refusal: the function is invalid, its build failed, or its
--     starts fail and it backs off) -> answered at once with the refusal's status and
--     reason (+ Retry-After while it backs off), and held requests are answered with it as
--     soon as a notice carries it;
--   * the number of requests held for a function goes to Redis as it changes: this
--     gate's share, the field ROOST_GATE_ID of the hash roost:fn:<f>:held, coalesced
--     every few ms, expiring unless renewed; other gates' shares add up
--     (`{"function":"<f>","gate":"<id>","held":<sum>}` on roost:scale when this gate's
--     grows), so the orchestrator starts every replica a burst needs at once
--     (roost_common::keys::held, roost_common::wire::redis::{HeldShare, HeldSignal});
--   * a ready notice carries the function's capacity (ready replicas times their
--     concurrency; sent again when a replica leaves): every request the gate sends to
--     Envoy counts against it until it ends, and one beyond it is held (and counted as
--     held) until a replica has room, in turn behind those held before it, so a burst is
--     spread over the replicas as they become ready instead of queueing in Envoy behind
--     the first one. Behind Envoy's public entry the gate sees a ready function's
--     requests only while the orchestrator gates it (it scales up);
--   * more than ROOST_GATE_MAX_HELD held for one function -> 503 JSON + Retry-After;
--     held longer than the function's hold time (roost:fn:<f>:hold_ms, its readiness
--     timeout and more; ROOST_GATE_WAKE_TIMEOUT_MS when absent) -> 504 JSON.
-- Envoy's own 503 (no x-envoy-upstream-service-time: the endpoint vanished in a
-- scale-down) sends the request through the wake path once more (@rewake).
-- Envoy unreachable (refused, reset before its answer began): the request is held until
-- Envoy accepts connections again and sent again if nothing of it reached Envoy or its
-- method is idempotent, else answered 502 (@envoy_lost; the section "Envoy unreachable").
--
-- Redis names: common/src/keys.rs; payloads: common/src/wire/redis.rs (this file spells
-- them by hand: the wake it publishes is the bare name that
-- roost_common::wire::redis::function_of_signal reads, the notice it reads is a
-- roost_common::wire::redis::ReadyNotice). Runs on OpenResty (resty.redis) and on Debian's
-- nginx + libnginx-mod-http-lua + lua-nginx-redis (nginx.redis).

local cjson = require("cjson.safe")
local semaphore = require("ngx.semaphore")

local redis_mod, redis_mod_name
do
    local ok, mod = pcall(require, "resty.redis")
    if ok then
        redis_mod, redis_mod_name = mod, "resty.redis"
    else
        redis_mod, redis_mod_name = require("nginx.redis"), "nginx.redis"
    end
end
pcall(cjson.encode_escape_forward_slash, false)

local ngx = ngx
local now = ngx.now
local dict = ngx.shared.roost_gate

-- roost_common::keys::{FUNCTIONS, WAKE_CHANNEL, READY_CHANNEL, ready, wake_lock}.
local FUNCTIONS = "roost:functions"
local WAKE_CHANNEL = "roost:wake"
local READY_CHANNEL = "roost:ready"
-- roost_common::keys::SCALE_CHANNEL and roost_common::wire::redis::HELD_TTL_MS.
local SCALE_CHANNEL = "roost:scale"
local HELD_TTL_MS = 5000

local function ready_key(fn) return "roost:fn:" .. fn .. ":ready" end
local function wake_lock_key(fn) return "roost:fn:" .. fn .. ":waking" end
-- roost_common::keys::{refusal, hold_ms}; the refusal is a roost_common::wire::redis::Refusal.
local function refusal_key(fn) return "roost:fn:" .. fn .. ":refusal" end
local function hold_key(fn) return "roost:fn:" .. fn .. ":hold_ms" end
-- roost_common::keys::held.
local function held_key(fn) return "roost:fn:" .. fn .. ":held" end

-- Writes this gate's share of a function's held count, atomically with the rest
-- (roost_common::wire::redis::HeldShare: the field ARGV[1], the gate's id, holds
-- "<count>:<expires_ms>" on Redis's clock; Redis 7.0 has no expiry per hash field):
-- a count above zero is stored to expire ARGV[3] ms from now and the key's PEXPIRE
-- renewed to the same (so the key outlives every share in it); zero removes the field.
-- Expired shares (a gate that died) are dropped on the way; the sum of the others is
-- returned and, when ARGV[4] is set, published on roost:scale as a
-- roost_common::wire::redis::HeldSignal (ARGV[4] is the message up to its count).
local HELD_SCRIPT = [[
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[2])
if n > 0 then
    redis.call('HSET', KEYS[1], ARGV[1], string.format('%d:%d', n, now + tonumber(ARGV[3])))
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
    redis.call('HDEL', KEYS[1], ARGV[1])
end
local total = 0
local shares = redis.call('HGETALL', KEYS[1])
for i = 1, #shares, 2 do
    local count, expires = string.match(shares[i + 1], '^(%d+):(%d+)$')
    if count and tonumber(expires) >= now then
        total = total + tonumber(count)
    else
        redis.call('HDEL', KEYS[1], shares[i])
    end
end
if ARGV[4] ~= '' then
    redis.call('PUBLISH', ARGV[5], ARGV[4] .. string.format('%d', total) .. '}')
end
return total
]]

-- How long held-count changes are gathered into one report to Redis.
local HELD_REPORT_DELAY = 0.005
-- How often a request held for capacity (not for a wake) looks for a free slot released
-- by another worker (its own worker's releases wake it at once).
local CAPACITY_POLL = 0.005

local _M = { _VERSION = "1" }

local conf = {}

-- Per worker.
local waiters = {}      -- function -> semaphore its held requests wait on
local held_here = {}    -- function -> requests held in this worker
local epoch = {}        -- function -> ready notices seen by this worker
local next_recheck = {} -- function -> time of the next lost-notice check
-- Requests waiting for Envoy to accept connections again (see hold_for_envoy).
local envoy_sem         -- semaphore they wait on
local envoy_epoch = 0   -- probes that found Envoy accepting
local envoy_next_probe = 0
local hold_for_envoy    -- defined with the rest of the Envoy handling, below
local send_answers      -- defined with the counting of the gate's own answers, below
local ANSWERS_EVERY = 1 -- seconds between two sends of the counts

local function env_num(name, default)
    local v = tonumber(os.getenv(name) or "")
    if v and v >= 0 then
        return v
    end
    return default
end

-- Sizes as nginx writes them: 1048576, 1024k, 10m.
local function size_bytes(s, default)
    local n, unit = tostring(s or ""):match("^(%d+)([kKmMgG]?)$")
    if not n then
        return default
    end
    local mult = ({ [""] = 1, k = 1024, m = 1048576, g = 1073741824 })[unit:lower()]
    return tonumber(n) * mult
end

function _M.init()
    -- redis://[:password@]host[:port][/db] (run.sh checked it; the database is always 0).
    local url = os.getenv("ROOST_REDIS_URL") or "redis://127.0.0.1:6379/"
    local password, rest = url:match("^redis://:([^@/]+)@(.*)$")
    if password then
        conf.redis_password = ngx.unescape_uri(password)
        url = "redis://" .. rest
    end
    local host, port = url:match("^redis://([%w%.%-_]+):?(%d*)")
    conf.redis_host = host or "127.0.0.1"
    conf.redis_port = tonumber(port) or 6379
    conf.redis_timeout = env_num("ROOST_GATE_REDIS_TIMEOUT_MS", 1000)
    conf.max_held = env_num("ROOST_GATE_MAX_HELD", 1000)
    -- This gate's field in each function's held count (run.sh defaults it to the host
    -- name and checks it; a name safe in JSON).
    conf.gate_id = os.getenv("ROOST_GATE_ID") or ""
    if not conf.gate_id:match("^[%w%._%-]+$") then
        local f = io.open("/proc/sys/kernel/hostname")
        conf.gate_id = (f and f:read("*l") or ""):match("^[%w%._%-]+$") or "gate"
        if f then
            f:close()
        end
    end
    conf.wake_timeout_ms = env_num("ROOST_GATE_WAKE_TIMEOUT_MS", 30000)
    conf.wake_timeout = conf.wake_timeout_ms / 1000
    conf.cache_ttl = env_num("ROOST_GATE_CACHE_TTL_MS", 1000) / 1000
    conf.republish = math.max(env_num("ROOST_GATE_REPUBLISH_MS", 2000), 50) / 1000
    conf.max_body = size_bytes(os.getenv("ROOST_GATE_MAX_BODY"), 10485760)
    -- How long a request waits for an emptied Redis to be given its functions back.
    conf.empty_wait = env_num("ROOST_GATE_EMPTY_WAIT_MS", 2000) / 1000
    -- Where the gate's own answers are counted (statsd, host:port); unset: not counted.
    local statsd = os.getenv("ROOST_STATSD_ADDR") or ""
    conf.statsd_host, conf.statsd_port = statsd:match("^([%w%.%-_]+):(%d+)$")
    conf.statsd_port = tonumber(conf.statsd_port)
    -- The subscriber's idle read: past it, it PINGs Redis to find a dead connection.
    conf.sub_idle = math.max(env_num("ROOST_GATE_PING_MS", 5000), 100) / 1000
    -- Envoy's public listener (run.sh checked it: host:port or [v6]:port), probed while
    -- requests wait for it to accept connections again.
    local envoy = os.getenv("ROOST_ENVOY_ADDR") or "127.0.0.1:10000"
    local eh, ep = envoy:match("^%[([^%]]+)%]:(%d+)$")
    if not eh then
        eh, ep = envoy:match("^([^:]+):(%d+)$")
    end
    conf.envoy_host = eh or "127.0.0.1"
    conf.envoy_port = tonumber(ep) or 10000
end

---------------------------------------------------------------------------------------
-- Redis

-- lua-nginx-redis 0.27 (Debian) has only set_timeout (one timeout for everything);
-- lua-resty-redis has set_timeouts too. The module answers any unknown name with a
-- Redis command, hence rawget.
local has_set_timeouts = rawget(redis_mod, "set_timeouts") ~= nil

local function connect(read_ms)
    local r, err = redis_mod:new()
    if not r then
        return nil, err
    end
    local t = conf.redis_timeout
    read_ms = read_ms or t
    if has_set_timeouts then
        r:set_timeouts(t, t, read_ms)
    else
        r:set_timeout(t)
    end
    local ok
    ok, err = r:connect(conf.redis_host, conf.redis_port)
    if not ok then
        return nil, err
    end
    -- A new connection (not one from the keepalive pool) authenticates first.
    if conf.redis_password and (r:get_reused_times() or 0) == 0 then
        ok, err = r:auth(conf.redis_password)
        if not ok then
            r:close()
            return nil, "AUTH: " .. tostring(err)
        end
    end
    if not has_set_timeouts and read_ms ~= t then
        r:set_timeout(read_ms)
    end
    return r
end

local function release(r)
    local ok = r:set_keepalive(30000, 64)
    if not ok then
        r:close()
    end
end

---------------------------------------------------------------------------------------
-- The caches (shared by the workers)
--
--   ready:<f>   expiry time (ngx.now()) of a ready flag; present = ready. It is not
--               deleted when it expires: the next request triggers one background
--               refresh and goes on with it (a wrong one ends in Envoy's 503, which
--               @rewake handles); a not-ready notice deletes it at once.
--   gen:<f>     bumped by every notice, so a refresh that raced a notice is dropped.
--   known:<f>   the function is in roost:functions (cache_ttl); unknown:<f> it is not
--               (a quarter of it, so a new function answers quickly).
--   held:<f>    requests held for <f> across all workers (the cap).
--   refusal:<f> the refusal callers of <f> are answered with (JSON), with the time it
--               ends, for as long as it backs off or one cache period for a refusal
--               without an end (then read again from Redis).
--   hold:<f>    how long requests for <f> are held, in ms (from Redis, cache_ttl).
--   waiting:<f> requests held for <f> to wake or for capacity (all workers): the count
--               reported to Redis (held:<f> also counts requests waiting for Envoy).
--   report:<f>  a report of waiting:<f> to Redis is on its way; reported:<f> the last
--               count reported.
--   cap:<f>     requests <f>'s ready replicas serve at once (the last ready notice);
--               absent: no limit.
--   fwd:<f>     requests sent to Envoy within cap:<f> and not finished (at most cap:<f>).
--   sub:<id>    worker <id> has a live subscription; `subscriptions` counts the
--               subscriptions made since the start (both for /healthz).

local function mark_ready(fn)
    dict:set("ready:" .. fn, now() + conf.cache_ttl)
end

local function post_waiters(fn)
    local s = waiters[fn]
    if s then
        local c = s:count()
        if c < 0 then
            s:post(-c)
        end
    end
end

-- A ready function found in this worker: its held requests go.
local function released(fn)
    epoch[fn] = (epoch[fn] or 0) + 1
    mark_ready(fn)
    post_waiters(fn)
end

local function refresh(premature, fn)
    if premature then
        return
    end
    local gen = dict:get("gen:" .. fn)
    local r = connect()
    if not r then
        return -- keep the cached flag: Redis being away must not stop ready functions
    end
    r:init_pipeline()
    r:sismember(FUNCTIONS, fn)
    r:get(ready_key(fn))
    local res = r:commit_pipeline()
    if not res then
        r:close()
        return
    end
    release(r)
    if dict:get("gen:" .. fn) ~= gen then
        return -- a notice came meanwhile; it is newer than this answer
    end
    if res[1] == 1 then
        dict:set("known:" .. fn, true, conf.cache_ttl)
    else
        dict:delete("known:" .. fn)
    end
    if res[1] == 1 and res[2] == "1" then
        mark_ready(fn)
    else
        dict:delete("ready:" .. fn)
    end
end

-- Whether the cache says ready (stale or not); a stale flag triggers one refresh.
local function cached_ready(fn)
    local expires = dict:get("ready:" .. fn)
    if not expires then
        return false
    end
    if expires < now() and dict:add("refresh:" .. fn, true, conf.cache_ttl) then
        local ok, err = ngx.timer.at(0, refresh, fn)
        if not ok then
            ngx.log(ngx.WARN, "roost gate: cannot refresh the ready flag of ", fn, ": ", err)
        end
    end
    return true
end

-- Keeps a refusal for the function's callers: `retry_s` seconds from now (a fraction is
-- fine) when it backs off, else one cache period (it lasts until the orchestrator lifts it).
local function remember_refusal(fn, refusal, retry_s)
    if type(refusal.status) ~= "number" then
        return
    end
    local ttl = (retry_s and retry_s > 0) and retry_s or conf.cache_ttl
    local until_t = (retry_s and retry_s > 0) and (now() + retry_s) or nil
    dict:set("refusal:" .. fn, cjson.encode({ refusal = refusal, ["until"] = until_t }), ttl)
end

-- Keeps the refusal read from Redis (GET and PTTL of roost:fn:<f>:refusal), if there is
-- one: true when there is.
local function remember_stored_refusal(fn, json, pttl)
    local refusal = type(json) == "string" and cjson.decode(json)
    if type(refusal) ~= "table" then
        return false
    end
    pttl = tonumber(pttl) or -1
    remember_refusal(fn, refusal, pttl > 0 and pttl / 1000 or nil)
    return true
end

---------------------------------------------------------------------------------------
-- The subscriber: one per worker, for the worker's lifetime.

-- payload: roost_common::wire::redis::ReadyNotice, {"function":"<f>","ready":true|false}.
local function on_notice(payload)
    local msg = cjson.decode(payload)
    if type(msg) ~= "table" or type(msg["function"]) ~= "string" then
        ngx.log(ngx.WARN, "roost gate: ignoring a malformed notice on ", READY_CHANNEL, ": ", payload)
        return
    end
    local fn = msg["function"]
    dict:incr("gen:" .. fn, 1, 0)
    if type(msg.refusal) == "table" then
        remember_refusal(fn, msg.refusal, tonumber(msg.refusal.retry_after_s))
        dict:delete("ready:" .. fn)
        post_waiters(fn) -- held requests are answered with it
    else
        dict:delete("refusal:" .. fn)
    end
    if msg.ready == true then
        if type(msg.capacity) == "number" and msg.capacity > 0 then
            dict:set("cap:" .. fn, msg.capacity)
        else
            dict:delete("cap:" .. fn)
        end
        released(fn)
    elseif msg.ready == false then
        dict:delete("ready:" .. fn)
        dict:delete("cap:" .. fn)
    end
end

local function on_reply(res)
    if type(res) == "table" and res[1] == "message" and res[2] == READY_CHANNEL then
        on_notice(res[3])
    end
end

local recheck

-- After (re)subscribing: notices sent while the subscription was down are lost, so
-- every cached flag is refreshed (kept meanwhile) and held requests check at once.
local function after_subscribe()
    for _, k in ipairs(dict:get_keys(0)) do
        if k:sub(1, 6) == "ready:" then
            dict:set(k, 0)
        end
    end
    for fn, n in pairs(held_here) do
        if n > 0 then
            ngx.timer.at(0, function(premature)
                if not premature then
                    recheck(fn)
                end
            end)
        end
    end
end

local function subscribe_once()
    local r, err = connect(conf.sub_idle * 1000)
    if not r then
        return "connect: " .. tostring(err)
    end
    local ok
    ok, err = r:subscribe(READY_CHANNEL)
    if not ok then
        r:close()
        return "subscribe: " .. tostring(err)
    end
    local sub_key = "sub:" .. ngx.worker.id()
    dict:set(sub_key, true)
    dict:incr("subscriptions", 1, 0)
    after_subscribe()
    local pinged = false
    while not ngx.worker.exiting() do
        local res
        res, err = r:read_reply()
        if res then
            pinged = false -- anything from Redis proves the connection alive
            on_reply(res)
        elseif err == "timeout" then
            -- Idle: a PING (allowed while subscribed, answered ["pong", ""]) finds a
            -- dead connection; no answer within another period ends this one.
            if pinged then
                err = "no answer to PING"
                break
            end
            pinged = true
            res, err = r:ping()
            if res then
                -- lua-resty-redis >= 0.28 keeps notices that came first for read_reply;
                -- 0.27 returns the first reply, which may be a notice.
                pinged = false
                on_reply(res)
            elseif err ~= "timeout" then
                break
            end
        else
            break
        end
    end
    dict:delete(sub_key)
    r:close()
    return err
end

local function subscriber(premature)
    if premature then
        return
    end
    local backoff = 0.05
    while not ngx.worker.exiting() do
        local started = now()
        local err = subscribe_once()
        if ngx.worker.exiting() then
            return
        end
        if now() - started > 5 then
            backoff = 0.05 -- it ran for a while: reconnect quickly
        end
        ngx.log(ngx.WARN, "roost gate: the subscription to ", READY_CHANNEL, " ended (",
            tostring(err), "); reconnecting in ", backoff, " s")
        ngx.sleep(backoff)
        backoff = math.min(backoff * 2, 2)
    end
end

function _M.init_worker()
    if ngx.worker.id() == 0 then
        ngx.log(ngx.NOTICE, "roost gate: Redis client ", redis_mod_name, " ", tostring(rawget(redis_mod, "_VERSION")),
            ", Redis at ", conf.redis_host, ":", conf.redis_port)
    end
    local ok, err = ngx.timer.at(0, subscriber)
    if not ok then
        ngx.log(ngx.ERR, "roost gate: cannot start the subscriber: ", err)
    end
    if ngx.worker.id() == 0 and conf.statsd_port then
        ok, err = ngx.timer.every(ANSWERS_EVERY, send_answers)
        if not ok then
            ngx.log(ngx.ERR, "roost gate: cannot start counting its answers: ", err)
        end
    end
end

---------------------------------------------------------------------------------------
-- The gate's own answers, counted
--
-- A call the gate answers itself (503 at the cap or without Redis, 504 past the deadline,
-- 502 when Envoy was lost, a refusal's status) never reaches a function's cluster in
-- Envoy, where calls are counted. Counted here per function and status, in a shared dict
-- of its own (so listing it stays cheap), and sent once a second by worker 0 as statsd
-- (`roost.gate.answers:N|c|#function:f,code:c`) to ROOST_STATSD_ADDR, which the
-- statsd-listener adds to the function's calls by code. Names not declared there are
-- dropped by the listener; a 404 (no such function) is not counted here at all.

local answers = ngx.shared.roost_answers

local function count_answer(status)
    local fn = ngx.var.roost_function
    if answers and status ~= 404 and fn and fn ~= "" then
        answers:incr(fn .. " " .. status, 1, 0)
    end
end

send_answers = function(premature)
    if premature then
        return
    end
    local keys = answers:get_keys(0)
    if #keys == 0 then
        return
    end
    local sock = ngx.socket.udp()
    local ok, err = sock:setpeername(conf.statsd_host, conf.statsd_port)
    if not ok then
        ngx.log(ngx.WARN, "roost gate: cannot count its answers at ", conf.statsd_host, ":", conf.statsd_port, ": ", err)
        return
    end
    local lines = {}
    for _, key in ipairs(keys) do
        local n = answers:get(key)
        local fn, code = key:match("^(%S+) (%d+)$")
        if n and n > 0 and fn then
            -- Taken off by what is sent, so a count that grows meanwhile is kept.
            answers:incr(key, -n, 0)
            lines[#lines + 1] = "roost.gate.answers:" .. n .. "|c|#function:" .. fn .. ",code:" .. code
            if #lines >= 20 then
                sock:send(table.concat(lines, "\n"))
                lines = {}
            end
        end
    end
    if #lines > 0 then
        sock:send(table.concat(lines, "\n"))
    end
    sock:close()
end

---------------------------------------------------------------------------------------
-- Answers

-- Whether `s` is valid UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
local function valid_utf8(s)
    local i, n = 1, #s
    while i <= n do
        local c = s:byte(i)
        local len
        if c < 0x80 then
            len = 1
        elseif c >= 0xC2 and c <= 0xDF then
            len = 2
        elseif c >= 0xE0 and c <= 0xEF then
            len = 3
        elseif c >= 0xF0 and c <= 0xF4 then
            len = 4
        else
            return false
        end
        for j = i + 1, i + len - 1 do
            local b = s:byte(j)
            if not b or b < 0x80 or b > 0xBF then
                return false
            end
        end
        local b = s:byte(i + 1)
        if (c == 0xE0 and b < 0xA0) or (c == 0xED and b > 0x9F) or (c == 0xF0 and b < 0x90) or (c == 0xF4 and b > 0x8F) then
            return false
        end
        i = i + len
    end
    return true
end

-- Client bytes as a URL spells them: every byte outside visible ASCII (0x21-0x7e) as
-- %XX, so "/\xff\xfe" is shown as %FF%FE and "/caf\xc3\xa9" as caf%C3%A9.
local function percent_encode(s)
    return (s:gsub("[^\33-\126]", function(c)
        return string.format("%%%02X", c:byte())
    end))
end

-- Every answer of the gate is valid UTF-8 JSON, whatever the client sent: a string that
-- is not valid UTF-8 is percent-encoded (cjson copies bytes >= 0x80 as they are).
local function json_exit(status, body, headers)
    count_answer(status)
    body.request_id = ngx.var.roost_request_id
    for k, v in pairs(body) do
        if type(v) == "string" and not valid_utf8(v) then
            body[k] = percent_encode(v)
        end
    end
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Cache-Control"] = "no-store"
    for k, v in pairs(headers or {}) do
        ngx.header[k] = v
    end
    ngx.say(cjson.encode(body))
    return ngx.exit(ngx.HTTP_OK)
end

-- Answers the caller with the function's refusal, if it has one.
local function answer_refusal(fn)
    local kept = dict:get("refusal:" .. fn)
    if not kept then
        return
    end
    local v = cjson.decode(kept)
    local r = type(v) == "table" and v.refusal
    if type(r) ~= "table" then
        return
    end
    local headers
    if v["until"] then
        local left = math.max(1, math.ceil(v["until"] - now()))
        headers = { ["Retry-After"] = tostring(left) }
    end
    return json_exit(r.status, {
        error = r.error,
        ["function"] = fn,
        state = r.state,
        reason = r.reason,
        retry_after_s = headers and tonumber(headers["Retry-After"]) or nil,
    }, headers)
end

local function add_cold_ms(ms)
    local before = tonumber(ngx.var.roost_cold_ms) or 0
    ngx.var.roost_cold_ms = tostring(before + ms)
end

---------------------------------------------------------------------------------------
-- The held count in Redis, and the capacity held requests are released into

-- Writes this gate's share of the function's held count to Redis (removed at zero; see
-- HELD_SCRIPT), and says on roost:scale that it grew, with the sum over every gate.
local function send_held_report(premature, fn)
    dict:delete("report:" .. fn)
    if premature then
        return
    end
    local n = math.max(dict:get("waiting:" .. fn) or 0, 0)
    local last = dict:get("reported:" .. fn) or 0
    local r = connect()
    if not r then
        return -- the next change, or the next recheck of a held request, reports again
    end
    -- roost_common::wire::redis::HeldSignal (function names and gate ids need no escaping).
    local signal = ""
    if n > last then
        signal = '{"function":"' .. fn .. '","gate":"' .. conf.gate_id .. '","held":'
    end
    local _, err = r:eval(HELD_SCRIPT, 1, held_key(fn), conf.gate_id, n, HELD_TTL_MS, signal, SCALE_CHANNEL)
    if err then
        ngx.log(ngx.WARN, "roost gate: cannot report the held count of ", fn, ": ", err)
        r:close()
        return
    end
    release(r)
    dict:set("reported:" .. fn, n)
end

-- Reports the function's held count soon: changes within HELD_REPORT_DELAY go together.
local function report_held(fn)
    if dict:add("report:" .. fn, true, 1) then
        local ok, err = ngx.timer.at(HELD_REPORT_DELAY, send_held_report, fn)
        if not ok then
            dict:delete("report:" .. fn)
            ngx.log(ngx.WARN, "roost gate: cannot report the held count of ", fn, ": ", err)
        end
    end
end

local function count_waiting(fn, delta)
    dict:incr("waiting:" .. fn, delta, 0)
    report_held(fn)
end

-- A place for a request among the ones sent to Envoy, within the function's capacity
-- (none known: no limit). Counted until the request ends (_M.log).
local function take_slot(fn)
    local cap = dict:get("cap:" .. fn)
    if not cap or ngx.var.roost_fwd == fn then
        return true
    end
    if dict:incr("fwd:" .. fn, 1, 0) <= cap then
        ngx.var.roost_fwd = fn
        return true
    end
    dict:incr("fwd:" .. fn, -1, 0)
    return false
end

---------------------------------------------------------------------------------------
-- Holding

local function on_abort()
    -- The client hung up while held: give its place back (the thread is gone after).
    local fn = ngx.ctx.holding
    if fn then
        ngx.ctx.holding = nil
        if ngx.ctx.holding_here then
            held_here[fn] = held_here[fn] - 1
            count_waiting(fn, -1)
        end
        dict:incr("held:" .. fn, -1, 0)
    end
    return ngx.exit(499)
end

-- Counts the request as held for `fn` (the cap, /healthz) and frees its place if the
-- client hangs up. `here`: counted in held_here too (a wake hold, with its rechecks).
local function start_holding(fn, here)
    ngx.ctx.holding = fn
    ngx.ctx.holding_here = here
    if not ngx.ctx.abort_handler then
        ngx.ctx.abort_handler = true
        local ok, err = ngx.on_abort(on_abort)
        if not ok then
            ngx.log(ngx.WARN, "roost gate: ngx.on_abort: ", err)
        end
    end
end

-- One held request per worker and function: is it ready after all (a lost notice)?
-- If not, publish the wake again, without the lock.
recheck = function(fn)
    local r = connect()
    if not r then
        return
    end
    r:init_pipeline()
    r:get(ready_key(fn))
    r:get(refusal_key(fn))
    r:pttl(refusal_key(fn))
    local res, err = r:commit_pipeline()
    if not res then
        r:close()
        return
    end
    if res[1] == "1" then
        release(r)
        released(fn)
        return
    end
    if remember_stored_refusal(fn, res[2], res[3]) then
        release(r)
        post_waiters(fn)
        return
    end
    if type(res[1]) == "table" then
        r:close()
        return
    end
    r:publish(WAKE_CHANNEL, fn)
    release(r)
end

local function wake(r, fn)
    local got, err = r:set(wake_lock_key(fn), "1", "NX", "PX", math.max(conf.wake_timeout_ms, 1000))
    if got == "OK" then
        return r:publish(WAKE_CHANNEL, fn)
    end
    if got == nil then
        return nil, err
    end
    return true -- someone else is waking it
end

-- Holds the request until `fn` is ready. `force`: Envoy just failed it, so only a new
-- notice (or the ready key found by a recheck) releases it, not the cached flag.
-- `r`: a Redis connection to wake the function with, or nil if a request of this
-- worker already did. Returns when released; answers 503/504 otherwise.
local function hold(fn, force, r)
    local held = dict:incr("held:" .. fn, 1, 0)
    if held > conf.max_held then
        dict:incr("held:" .. fn, -1, 0)
        if r then
            release(r)
        end
        return json_exit(503, {
            error = "too many requests are waiting for \"" .. fn .. "\" to wake; retry shortly",
            ["function"] = fn,
        }, { ["Retry-After"] = "1" })
    end
    held_here[fn] = (held_here[fn] or 0) + 1
    count_waiting(fn, 1)
    if held_here[fn] == 1 then
        -- The first held request of this worker: the first lost-notice check is one
        -- period away.
        next_recheck[fn] = now() + conf.republish
    end
    start_holding(fn, true)

    local start = now()
    local sem = waiters[fn]
    if not sem then
        sem = semaphore.new(0)
        waiters[fn] = sem
    end
    local epoch0 = epoch[fn] or 0

    if r then
        local ok, err = wake(r, fn)
        if ok then
            release(r)
        else
            r:close()
            ngx.log(ngx.WARN, "roost gate: cannot publish the wake of ", fn, ": ", err)
        end
    end

    local hold_ms = dict:get("hold:" .. fn) or conf.wake_timeout_ms
    local deadline = start + hold_ms / 1000
    local outcome
    -- Ready, but every slot of its capacity is taken: look again every CAPACITY_POLL.
    local blocked = false
    while true do
        if dict:get("refusal:" .. fn) then
            outcome = "refused"
            break
        end
        if (epoch[fn] or 0) ~= epoch0 or (not force and dict:get("ready:" .. fn)) then
            if take_slot(fn) then
                outcome = "ready"
                break
            end
            blocked = true
        end
        ngx.update_time()
        local left = deadline - now()
        if left <= 0 then
            outcome = "timeout"
            break
        end
        local ok, err = sem:wait(math.min(left, blocked and CAPACITY_POLL or conf.republish))
        if not ok and err == "timeout" then
            ngx.update_time()
            if now() >= (next_recheck[fn] or 0) and now() < deadline then
                next_recheck[fn] = now() + conf.republish
                report_held(fn) -- renews the count's expiry in Redis
                if not blocked then
                    recheck(fn)
                end
            end
        end
    end

    ngx.ctx.holding = nil
    held_here[fn] = held_here[fn] - 1
    count_waiting(fn, -1)
    dict:incr("held:" .. fn, -1, 0)
    ngx.update_time()
    add_cold_ms(math.floor((now() - start) * 1000 + 0.5))
    if outcome == "refused" then
        return answer_refusal(fn)
    end
    if outcome == "timeout" then
        if blocked then
            return json_exit(504, {
                error = "no replica of \"" .. fn .. "\" had room for the request within " .. hold_ms .. " ms",
                ["function"] = fn,
                reason = "every ready replica was at its concurrency the whole time; more start as the load needs them, up to max_replicas",
            })
        end
        return json_exit(504, {
            error = "function \"" .. fn .. "\" did not become ready within " .. hold_ms .. " ms",
            ["function"] = fn,
        })
    end
end

---------------------------------------------------------------------------------------
-- Phases

-- The first segment of the path as sent, for the 404 of a request whose segment is not a
-- valid function name (nginx.conf's $roost_function is "" then); any byte outside
-- visible ASCII percent-encoded, so the answer is valid JSON (gateway-lua/README.md).
local function first_segment()
    local m = ngx.re.match(ngx.var.roost_uri or "", [[^/([^/?#]*)]], "jo")
    return m and percent_encode(m[1]) or ""
end

local function redis_unavailable(err)
    return json_exit(503, { error = "the gate cannot reach Redis (" .. tostring(err) .. "); retry shortly" },
        { ["Retry-After"] = "1" })
end

local function not_found(fn)
    if fn == "" then
        return json_exit(404, { error = "no function named in the path: call /<function>[/...]" })
    end
    return json_exit(404, {
        error = "no function named \"" .. fn .. "\"",
        hint = "declare it in global-function-definition.yml",
    })
end

-- Lets the request through to Envoy once `fn` is ready: at once from the cache, or
-- after a Redis check, or after waking it and holding the request.
-- Waits (at most ROOST_GATE_EMPTY_WAIT_MS) for the set of functions to exist again:
-- absent, Redis has lost its data (a restart without persistence) and the orchestrator
-- writes it back within a tick. True when it is back.
local function functions_back()
    local deadline = now() + conf.empty_wait
    while now() < deadline do
        ngx.sleep(0.1)
        ngx.update_time()
        local r = connect()
        if r then
            local n = r:exists(FUNCTIONS)
            release(r)
            if n == 1 then
                return true
            end
        end
    end
    return false
end

local function admit(fn, force, waited)
    if not force and cached_ready(fn) then
        -- Nobody held ahead of it and a replica has room (or its capacity is not known):
        -- on to Envoy, counted against the capacity until it ends.
        if (dict:get("waiting:" .. fn) or 0) <= 0 and take_slot(fn) then
            return
        end
        -- Every ready replica is at its concurrency, or others are held (a burst while
        -- replicas start): wait here, in turn, for room on any replica (and be counted
        -- as held, so the orchestrator starts what the wait needs) rather than in
        -- Envoy's queue of the replica it would pick now.
        return hold(fn, false, nil)
    end
    if dict:get("unknown:" .. fn) then
        return not_found(fn)
    end
    if dict:get("refusal:" .. fn) then
        return answer_refusal(fn)
    end
    -- Another request of this worker is already held for it: it woke the function.
    if not force and (held_here[fn] or 0) > 0 and dict:get("known:" .. fn) then
        return hold(fn, false, nil)
    end
    local r, err = connect()
    if not r then
        return redis_unavailable(err)
    end
    local gen = dict:get("gen:" .. fn)
    r:init_pipeline()
    r:sismember(FUNCTIONS, fn)
    r:get(ready_key(fn))
    r:get(refusal_key(fn))
    r:pttl(refusal_key(fn))
    r:get(hold_key(fn))
    r:exists(FUNCTIONS)
    local res
    res, err = r:commit_pipeline()
    if not res or type(res[1]) ~= "number" then
        r:close()
        return redis_unavailable(err or (res and type(res[1]) == "table" and res[1][2]))
    end
    if res[1] ~= 1 then
        release(r)
        -- No set at all: Redis came back empty. A declared function must not get a 404
        -- for that: wait for the orchestrator to write the set back, then look again.
        if res[6] == 0 and not waited and functions_back() then
            return admit(fn, force, true)
        end
        dict:set("unknown:" .. fn, true, conf.cache_ttl / 4)
        dict:delete("known:" .. fn)
        return not_found(fn)
    end
    dict:set("known:" .. fn, true, conf.cache_ttl)
    local hold_ms = tonumber(res[5])
    if hold_ms and hold_ms > 0 then
        dict:set("hold:" .. fn, hold_ms, conf.cache_ttl)
    end
    if remember_stored_refusal(fn, res[3], res[4]) then
        release(r)
        return answer_refusal(fn)
    end
    if res[2] == "1" and not force then
        release(r)
        if dict:get("gen:" .. fn) == gen then
            mark_ready(fn)
        end
        return
    end
    return hold(fn, force, r)
end

function _M.access()
    -- $roost_function and $roost_request_id are nginx.conf's maps.
    local fn = ngx.var.roost_function
    if fn == "" then
        return not_found(first_segment())
    end
    -- Read the body now: a chunked body over the limit is refused (413) before any
    -- wake, a held request has its body, and a body in memory can be sent again.
    ngx.req.read_body()
    admit(fn, false)
    -- A pass to Envoy failed lately and no check has found it back since: wait for that
    -- rather than be sent into a dead (or dying) Envoy.
    if dict:get("envoy_down") then
        hold_for_envoy(fn)
    end
    -- A request sent within the function's capacity ends in a location that gives its
    -- slot back (_M.log); a function whose capacity is not known runs no Lua after this.
    if ngx.var.roost_fwd ~= "" then
        return ngx.exec("@envoy_held")
    end
    return ngx.exec("@envoy")
end

-- The request ended: a request sent within its function's capacity gives its
-- slot back, and one request of this worker waiting for a slot goes.
function _M.log()
    local fn = ngx.var.roost_fwd
    if fn == nil or fn == "" then
        return
    end
    dict:incr("fwd:" .. fn, -1, 0)
    local s = waiters[fn]
    if s and s:count() < 0 then
        s:post(1)
    end
end

-- Envoy answered 503.
function _M.rewake()
    local fn = ngx.var.roost_function
    -- A function's own 503 passed through Envoy's router, which stamps it with
    -- x-envoy-upstream-service-time; an overflow of Envoy's queue says x-envoy-overloaded.
    -- Neither is a vanished endpoint: answer 503 and never send the request again.
    local overloaded = ngx.var.upstream_http_x_envoy_overloaded
    if ngx.var.upstream_http_x_envoy_upstream_service_time or overloaded then
        return json_exit(503, {
            error = "function \"" .. fn .. "\" answered 503 (Service Unavailable)",
            ["function"] = fn,
            from = overloaded and "envoy (overloaded)" or "function",
        }, { ["Retry-After"] = ngx.var.upstream_http_retry_after or "1" })
    end
    -- Only a body kept whole (in memory, or a file) can be sent again.
    local has_body = (tonumber(ngx.var.content_length) or 0) > 0 or ngx.var.http_transfer_encoding ~= nil
    if has_body and not ngx.req.get_body_data() and not ngx.req.get_body_file() then
        return json_exit(503, { error = "no replica of \"" .. fn .. "\" is available; retry shortly",
            ["function"] = fn }, { ["Retry-After"] = "1" })
    end
    dict:delete("ready:" .. fn)
    dict:incr("gen:" .. fn, 1, 0)
    admit(fn, true)
    -- Released: proxy_pass in @rewake sends it again; a second 503 reaches the client.
end

---------------------------------------------------------------------------------------
-- Envoy unreachable (nginx.conf: @envoy_lost)
--
-- When a connection to Envoy is refused, times out, or fails before Envoy's answer
-- began, nginx tries the upstream's backup: the gate's own stand-in on a unix socket,
-- which answers 597. Every pass of a request to Envoy thus ends in a list of attempts
-- ($upstream_addr, $upstream_status, $upstream_bytes_sent): Envoy's (failed), then the
-- stand-in's. What to do with the request follows from those lists and its method.

-- RFC 9110's idempotent methods (TRACE aside): sent again even if Envoy may have had them.
local IDEMPOTENT = { GET = true, HEAD = true, OPTIONS = true, PUT = true, DELETE = true }
-- How often a held request's worker checks that Envoy accepts connections again, and
-- how long one check may take.
local ENVOY_PROBE_INTERVAL = 0.05
local ENVOY_PROBE_TIMEOUT_MS = 500
-- Passes to Envoy one request may take (each is an internal redirect; nginx allows 10).
local MAX_ENVOY_PASSES = 5

-- The entries of an upstream variable for the last pass ("a, b : c, d" -> {"c", "d"}).
-- Pure (exported for the tests, like envoy_failure).
local function last_pass(s)
    s = s or ""
    local from = 1
    while true do
        local i = s:find(" : ", from, true)
        if not i then
            break
        end
        from = i + 3
    end
    local out = {}
    for item in s:sub(from):gmatch("[^,]+") do
        out[#out + 1] = item:match("^%s*(.-)%s*$")
    end
    return out
end
_M.last_pass = last_pass

-- Pure: what to do with a request whose pass to Envoy nginx answered 597. `addrs`,
-- `statuses`, `sent`: that pass's entries of $upstream_addr, $upstream_status and
-- $upstream_bytes_sent. Returns the action and the bytes Envoy was sent:
--   "foreign"  the 597 is not the stand-in's (a function answered it through Envoy);
--   "resend"   no byte reached Envoy (refused, connect timeout, reset before sending),
--              or some did and the method is idempotent: held until Envoy is back;
--   "lost"     Envoy had (part of) a request whose method is not idempotent: 502;
--   "timeout"  Envoy had it and did not answer in proxy_read_timeout: 504.
function _M.envoy_failure(method, addrs, statuses, sent)
    local n = #addrs
    if n == 0 or addrs[n]:sub(1, 5) ~= "unix:" or statuses[n] ~= "597" then
        return "foreign", 0
    end
    local bytes, timed_out = 0, false
    for i = 1, n - 1 do
        local b = tonumber(sent[i]) or 0
        if b > 0 then
            bytes = bytes + b
            timed_out = timed_out or statuses[i] == "504"
        end
    end
    if bytes == 0 then
        return "resend", 0
    end
    if timed_out then
        return "timeout", bytes
    end
    if IDEMPOTENT[method] then
        return "resend", bytes
    end
    return "lost", bytes
end

local function probe_envoy()
    local sock = ngx.socket.tcp()
    sock:settimeout(ENVOY_PROBE_TIMEOUT_MS)
    local ok = sock:connect(conf.envoy_host, conf.envoy_port)
    sock:close()
    return ok
end

-- Holds the request until Envoy accepts a connection, within the function's hold time
-- counted from the request's first failed pass (or from now, for a request not sent yet),
-- and the held-request cap. One TCP connect per worker and ENVOY_PROBE_INTERVAL checks
-- for all the worker's held requests, the first at least ENVOY_PROBE_INTERVAL after
-- the failure that marked Envoy down: a dying Envoy's listening socket still completes
-- connections for a few milliseconds (and resets them), which must not count as "back".
hold_for_envoy = function(fn)
    local since = tonumber(ngx.var.roost_envoy_since)
    if not since then
        since = now()
        ngx.var.roost_envoy_since = tostring(since)
    end
    local hold_ms = dict:get("hold:" .. fn) or conf.wake_timeout_ms
    local deadline = since + hold_ms / 1000
    local held = dict:incr("held:" .. fn, 1, 0)
    if held > conf.max_held then
        dict:incr("held:" .. fn, -1, 0)
        return json_exit(503, {
            error = "too many requests are waiting for Envoy to accept connections again; retry shortly",
            ["function"] = fn,
        }, { ["Retry-After"] = "1" })
    end
    start_holding(fn, false)
    if not envoy_sem then
        envoy_sem = semaphore.new(0)
    end
    local start = now()
    local epoch0 = envoy_epoch
    local up = false
    while true do
        if envoy_epoch ~= epoch0 then
            up = true
            break
        end
        ngx.update_time()
        local earliest = (dict:get("envoy_down") or 0) + ENVOY_PROBE_INTERVAL
        if envoy_next_probe < earliest then
            envoy_next_probe = earliest
        end
        if now() >= envoy_next_probe then
            envoy_next_probe = now() + ENVOY_PROBE_INTERVAL
            if probe_envoy() then
                dict:delete("envoy_down")
                envoy_epoch = envoy_epoch + 1
                envoy_next_probe = 0
                local c = envoy_sem:count()
                if c < 0 then
                    envoy_sem:post(-c)
                end
                up = true
                break
            end
            ngx.update_time()
        end
        local left = deadline - now()
        if left <= 0 then
            break
        end
        envoy_sem:wait(math.min(left, math.max(envoy_next_probe - now(), 0.001)))
    end
    ngx.ctx.holding = nil
    dict:incr("held:" .. fn, -1, 0)
    ngx.update_time()
    add_cold_ms(math.floor((now() - start) * 1000 + 0.5))
    if not up then
        return json_exit(504, {
            error = "Envoy did not accept connections within " .. hold_ms .. " ms; the request was not sent",
            ["function"] = fn,
            reason = "the gate could not connect to Envoy (" .. conf.envoy_host .. ":" .. conf.envoy_port
                .. ") and held the request for the function's hold time",
        })
    end
end

-- A pass of the request to Envoy failed (nginx.conf's @envoy_lost, reached through the
-- stand-in's 597): answer, or hold the request until Envoy is back and let nginx send
-- it again.
function _M.envoy_lost()
    local fn = ngx.var.roost_function
    local method = ngx.req.get_method()
    local action, bytes = _M.envoy_failure(method, last_pass(ngx.var.upstream_addr),
        last_pass(ngx.var.upstream_status), last_pass(ngx.var.upstream_bytes_sent))
    if action == "foreign" then
        return json_exit(502, {
            error = "function \"" .. fn .. "\" answered 597, a status the gate reserves for itself",
            ["function"] = fn,
        })
    end
    -- Envoy is down (or was, for a pooled connection): requests not sent yet wait for
    -- it to accept connections again instead of trying it (access()).
    dict:set("envoy_down", now())
    if action == "lost" then
        return json_exit(502, {
            error = "the connection to Envoy failed while it had the request",
            ["function"] = fn,
            reason = "the proxy failed mid-request (" .. bytes .. " bytes of it had been sent to Envoy); it was not "
                .. "sent again because " .. method .. " is not idempotent, so it may or may not have run",
        })
    end
    if action == "timeout" then
        return json_exit(504, {
            error = "Envoy did not answer the request in time",
            ["function"] = fn,
            reason = "no answer within the gate's proxy_read_timeout after " .. bytes .. " bytes were sent; not sent again",
        })
    end
    local passes = (tonumber(ngx.var.roost_envoy_passes) or 0) + 1
    ngx.var.roost_envoy_passes = tostring(passes)
    if passes > MAX_ENVOY_PASSES then
        return json_exit(502, {
            error = "Envoy accepted connections but failed the request " .. MAX_ENVOY_PASSES .. " times",
            ["function"] = fn,
            reason = "each pass was refused or reset before Envoy answered; retry shortly",
        }, { ["Retry-After"] = "1" })
    end
    hold_for_envoy(fn)
    -- Released: proxy_pass in @envoy_lost sends it again.
end

function _M.too_large()
    ngx.status = 413
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Cache-Control"] = "no-store"
    ngx.say(cjson.encode({
        error = "the request body is over the limit of " .. conf.max_body .. " bytes",
        limit = conf.max_body,
        request_id = ngx.var.roost_request_id,
    }))
    return ngx.exit(ngx.HTTP_OK)
end

-- nginx refused the request itself (nginx.conf's error_page ... /.roost/malformed): a request
-- line or header it cannot parse, a header or URI too long, a bad chunked body, an HTTP
-- version or transfer coding it does not speak. Answered in JSON with a 4xx: nginx's
-- 494 as 431 (nginx.conf), its 501 and 505 as 400 (the client's bytes are at fault, not
-- the gate). The same path asked for by a client is a 404 like any other.
local MALFORMED = {
    [400] = { 400, "the request is malformed (request line, a header, or a chunked body)" },
    [414] = { 414, "the request line is too long" },
    [431] = { 431, "a request header, or all of them together, is too large" },
    [501] = { 400, "the request's Transfer-Encoding is not supported (only chunked is)" },
    [505] = { 400, "the request's HTTP version is not supported (HTTP/1.0 and HTTP/1.1 are)" },
}

function _M.malformed()
    local known = MALFORMED[ngx.status]
    if not known then
        return not_found(first_segment())
    end
    return json_exit(known[1], { error = known[2] })
end

function _M.healthz()
    local held, released = {}, {}
    local subscribed = 0
    for _, k in ipairs(dict:get_keys(0)) do
        if k:sub(1, 5) == "held:" then
            held[k:sub(6)] = dict:get(k)
        elseif k:sub(1, 4) == "fwd:" then
            released[k:sub(5)] = dict:get(k)
        elseif k:sub(1, 4) == "sub:" then
            subscribed = subscribed + 1
        end
    end
    -- cjson writes an empty table as {}.
    ngx.say(cjson.encode({
        status = "ok",
        gate = conf.gate_id,
        workers = ngx.worker.count(),
        subscribed = subscribed,
        subscriptions = dict:get("subscriptions") or 0,
        held = held,
        released = released,
    }))
end

return _M
