-- Argo CD health check for plugin-operator.dev/PluginInstall (Lua 5.1, as Argo CD runs it).
-- Argo CD setting: resource.customizations.health.plugin-operator.dev_PluginInstall
--   Active                           -> Healthy (a Manual install with an upgrade waiting for
--                                       approval says so in the message)
--   Starting, Connecting, Restarting -> Progressing
--   Error                            -> Degraded, with status.lastFailure
--   Inactive (spec.active: false)    -> Suspended: switched off on purpose, waiting for
--                                       spec.active: true, like a suspended CronJob
-- A status the operator has not written yet for the current spec (observedGeneration behind
-- metadata.generation) is Progressing, so a change just synced is never judged by the old one.
local hs = { status = "Progressing", message = "Waiting for the operator" }

local function condition(status, type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.phase == nil then
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
local ready = condition(status, "Ready")
local detail = ""
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  detail = ": " .. ready.message
end

if phase == "Active" then
  hs.status = "Healthy"
  hs.message = "Active"
  if status.version ~= nil then
    hs.message = "Active on " .. status.version
  end
  if status.endpoint ~= nil then
    hs.message = hs.message .. " at " .. status.endpoint
  end
  local upgrade = condition(status, "UpgradeAvailable")
  if upgrade ~= nil and upgrade.status == "True" then
    local available = status.availableVersion or "a newer version"
    hs.message = hs.message .. "; " .. available .. " is available"
    if obj.spec ~= nil and obj.spec.upgradeMode ~= "Auto" then
      hs.message = hs.message .. " (upgradeMode Manual: approve it with spec.approvedVersion)"
    end
  end
elseif phase == "Starting" or phase == "Connecting" or phase == "Restarting" then
  hs.status = "Progressing"
  hs.message = phase .. detail
elseif phase == "Error" then
  hs.status = "Degraded"
  local failure = status.lastFailure
  if failure ~= nil and (failure.reason ~= nil or failure.message ~= nil) then
    hs.message = "Error: " .. (failure.reason or "Failed")
    if failure.message ~= nil and failure.message ~= "" then
      hs.message = hs.message .. ": " .. failure.message
    end
  else
    hs.message = "Error" .. detail
  end
elseif phase == "Inactive" then
  hs.status = "Suspended"
  hs.message = "Inactive (spec.active: false)"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
