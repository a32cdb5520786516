-- Argo CD health check for nodeaudit.io/NodeAuditPolicy (kstatus-style status).
-- Installed as resource.customizations.health.nodeaudit.io_NodeAuditPolicy in argocd-cm
-- (see argocd-cm.yaml beside this file). Argo CD runs it with gopher-lua (Lua 5.1): `obj` is the
-- live object; the script returns {status = ..., message = ...}.
--
--   Progressing  no status yet; status.observedGeneration < metadata.generation (the operator has
--                not seen the latest spec); Reconciling=True (nodes still being applied or
--                retried); Ready not (yet) True
--   Degraded     Stalled=True (InvalidSpec, MaxFailures); or, once nothing is in progress,
--                Degraded=True (Conflict with another policy, NodesFailed)
--   Healthy      Ready=True for the current generation
-- The order matters: a condition written for an older generation says nothing about the current
-- spec, so generation is checked first; a node failure that is still being retried is progress.
local hs = {}

local function condition(conditions, ctype)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  elseif message ~= "" then
    return message
  elseif reason ~= "" then
    return reason
  end
  return fallback
end

local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for the nodeaudit operator to report status"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation) ..
    " (observed " .. tostring(observed or "none") .. ")"
  return hs
end

-- First match wins: a stalled rollout is Degraded even while it reports Reconciling.
local verdicts = {
  {"Stalled", "Degraded"},
  {"Reconciling", "Progressing"},
  {"Degraded", "Degraded"},
  {"Ready", "Healthy"},
}
for _, verdict in ipairs(verdicts) do
  local found = condition(status.conditions, verdict[1])
  if found ~= nil and found.status == "True" then
    hs.status = verdict[2]
    hs.message = describe(found, verdict[1])
    return hs
  end
end

hs.status = "Progressing"
hs.message = describe(condition(status.conditions, "Ready"), "Waiting for the Ready condition")
return hs
