-- Roost's gate: the public entry. A ready function is proxied straight to Envoy (the
-- ready flag is cached for a second); a sleeping one is woken once through Redis and
-- its requests are held until the orchestrator says it is ready (a subscription per
-- worker wakes them; nobody polls). Redis keys: see common/src/keys.rs.

local cjson = require("cjson.safe")
local ok_resty, redis_mod = pcall(require, "resty.redis")
if not ok_resty then
    redis_mod = require("nginx.redis") -- Debian's lua-nginx-redis
end
local semaphore = require("ngx.semaphore")

local _M = {}

local dict = ngx.shared.roost_gate
local waiting = {} -- function -> semaphore, per worker
local conf = {}

local READY_TTL = 1     -- seconds a ready flag is trusted without asking Redis
local KNOWN_TTL = 1     -- seconds a declared function is trusted
local REPUBLISH = 2     -- seconds between wake re-publishes while a request waits

local function env_num(name, default)
    local v = tonumber(os.getenv(name) or "")
    return v or default
end

function _M.init()
    conf.redis_host = os.getenv("ROOST_REDIS_HOST") or "127.0.0.1"
    conf.redis_port = env_num("ROOST_REDIS_PORT", 6379)
    conf.max_held = env_num("ROOST_GATE_MAX_HELD", 1000)
    conf.wake_timeout = env_num("ROOST_GATE_WAKE_TIMEOUT_MS", 30000) / 1000
end

local function connect()
    local r = redis_mod:new()
    r:set_timeouts(1000, 1000, 1000)
    local ok, err = r:connect(conf.redis_host, conf.redis_port)
    if not ok then
        return nil, err
    end
    return r
end

local function release(r)
    r:set_keepalive(30000, 64)
end

local function json_exit(status, body, headers)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    for k, v in pairs(headers or {}) do
        ngx.header[k] = v
    end
    ngx.say(cjson.encode(body))
    return ngx.exit(status)
end

local function sem_for(fn)
    local s = waiting[fn]
    if not s then
        s = semaphore.new(0)
        waiting[fn] = s
    end
    return s
end

-- The subscriber: one per worker, for the lifetime of the worker.
local function on_ready_message(payload)
    local msg = cjson.decode(payload)
    if type(msg) ~= "table" or type(msg["function"]) ~= "string" then
        return
    end
    local fn = msg["function"]
    if msg.ready then
        dict:set("ready:" .. fn, true, READY_TTL)
        local s = waiting[fn]
        if s and s:count() < 0 then
            s:post(-s:count())
        end
    else
        dict:delete("ready:" .. fn)
    end
end

local function subscribe(premature)
    if premature then
        return
    end
    local backoff = 0.1
    while not ngx.worker.exiting() do
        local r, err = connect()
        if r then
            r:set_timeouts(1000, 1000, 5000)
            local ok
            ok, err = r:subscribe("roost:ready")
            if ok then
                backoff = 0.1
                while not ngx.worker.exiting() do
                    local res, rerr = r:read_reply()
                    if res then
                        if res[1] == "message" then
                            on_ready_message(res[3])
                        end
                    elseif rerr ~= "timeout" then
                        err = rerr
                        break
                    end
                end
            end
            r:close()
        end
        if ngx.worker.exiting() then
            return
        end
        ngx.log(ngx.WARN, "roost gate: Redis subscription lost (", tostring(err), "); retrying")
        ngx.sleep(backoff)
        backoff = math.min(backoff * 2, 2)
    end
end

function _M.init_worker()
    local ok, err = ngx.timer.at(0, subscribe)
    if not ok then
        ngx.log(ngx.ERR, "roost gate: cannot start the subscriber: ", err)
    end
end

-- /<function>[/...] -> function name, or nil.
local function function_of(uri)
    return ngx.re.match(uri, [[^/([a-z0-9][a-z0-9_-]{0,62})(?:/|$)]], "jo")
end

local function is_declared(r, fn)
    if dict:get("known:" .. fn) then
        return true
    end
    local member = r:sismember("roost:functions", fn)
    if member == 1 then
        dict:set("known:" .. fn, true, KNOWN_TTL)
        return true
    end
    return false
end

local function is_ready(r, fn)
    if dict:get("ready:" .. fn) then
        return true
    end
    local v = r:get("roost:fn:" .. fn .. ":ready")
    if v == "1" then
        dict:set("ready:" .. fn, true, READY_TTL)
        return true
    end
    return false
end

local function publish_wake(r, fn, first)
    if first then
        local got = r:set("roost:fn:" .. fn .. ":waking", "1", "NX", "PX", math.floor(conf.wake_timeout * 1000))
        if got ~= "OK" then
            return -- someone else is waking it
        end
    end
    r:publish("roost:wake", fn)
end

-- Holds the request until the function is ready; returns the time waited (ms).
local function hold(r, fn)
    local held = dict:incr("held:" .. fn, 1, 0)
    if held > conf.max_held then
        dict:incr("held:" .. fn, -1)
        release(r)
        return json_exit(503, { error = "too many requests are waiting for " .. fn .. " to wake; retry shortly",
            ["function"] = fn }, { ["Retry-After"] = "1" })
    end
    local start = ngx.now()
    publish_wake(r, fn, true)
    release(r)
    local sem = sem_for(fn)
    local deadline = start + conf.wake_timeout
    while true do
        if dict:get("ready:" .. fn) then
            break
        end
        local left = deadline - ngx.now()
        if left <= 0 then
            dict:incr("held:" .. fn, -1)
            return json_exit(504, { error = fn .. " did not become ready within " .. conf.wake_timeout .. " s",
                ["function"] = fn })
        end
        local woken = sem:wait(math.min(left, REPUBLISH))
        -- A ready notice may have been missed (Redis or the subscriber restarted). Held
        -- requests do not poll: one of them per function, across all workers, asks
        -- Redis once every REPUBLISH seconds and wakes again (the orchestrator's wake is
        -- idempotent); the others see the shared ready flag it sets.
        if not woken and not dict:get("ready:" .. fn) and dict:add("recheck:" .. fn, true, REPUBLISH) then
            local r2 = connect()
            if r2 then
                local ready = is_ready(r2, fn)
                if not ready then
                    publish_wake(r2, fn, false)
                end
                release(r2)
                if ready then
                    if sem:count() < 0 then
                        sem:post(-sem:count())
                    end
                    break
                end
            end
        end
    end
    dict:incr("held:" .. fn, -1)
    ngx.update_time()
    return math.floor((ngx.now() - start) * 1000 + 0.5)
end

local function request_id()
    local h = ngx.req.get_headers()["x-request-id"]
    if type(h) == "table" then
        h = h[1]
    end
    if not h or h == "" or #h > 200 then
        h = ngx.var.request_id
        ngx.req.set_header("X-Request-Id", h)
    end
    ngx.ctx.request_id = h
end

local function gate(force_wake)
    if not ngx.ctx.request_id then
        request_id()
    end
    local m = function_of(ngx.var.uri)
    if not m then
        return json_exit(404, { error = "call /<function>: the path does not name a function" })
    end
    local fn = m[1]
    if not force_wake and dict:get("ready:" .. fn) then
        return -- the common path: no Redis round trip
    end
    local r, err = connect()
    if not r then
        return json_exit(503, { error = "the gate cannot reach Redis: " .. tostring(err) }, { ["Retry-After"] = "1" })
    end
    if not is_declared(r, fn) then
        release(r)
        return json_exit(404, { error = "no function named \"" .. fn .. "\"",
            hint = "declare it in global-function-definition.yml" })
    end
    if not force_wake and is_ready(r, fn) then
        release(r)
        return
    end
    local waited = hold(r, fn)
    ngx.ctx.cold_ms = (ngx.ctx.cold_ms or 0) + waited
end

function _M.access()
    return gate(false)
end

-- Envoy answered 503. Envoy's own 503 (no replica: one vanished in a scale-down)
-- carries no x-envoy-upstream-service-time; a function's own 503 does.
function _M.rewake()
    if ngx.var.upstream_http_x_envoy_upstream_service_time then
        return json_exit(503, { error = "the function answered 503" })
    end
    local m = function_of(ngx.var.uri)
    if m then
        dict:delete("ready:" .. m[1])
    end
    return gate(true)
end

function _M.headers()
    ngx.header["X-Request-Id"] = ngx.ctx.request_id
    local cold = ngx.ctx.cold_ms
    ngx.header["X-Roost-Cold-Start"] = cold and (cold .. "ms") or "none"
end

return _M
