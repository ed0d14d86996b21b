-- Argo CD health of a berth.dev Endpoint: Healthy when InService and Ready for the current
-- generation; Progressing while the operator has not caught up or a rollout runs; Degraded
-- when the phase is Failed or the Degraded condition is True (e.g. after an auto rollback).
local hs = {status = "Progressing", message = "Waiting for the Berth operator"}
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local conditions = {}
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    conditions[condition.type] = condition
  end
end
local function current(condition)
  return condition ~= nil and (generation == nil or condition.observedGeneration == nil
    or condition.observedGeneration >= generation)
end
local phase = obj.status.phase or ""
local degraded = conditions["Degraded"]
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = obj.status.failureReason or (degraded and degraded.message) or "Endpoint failed"
  return hs
end
if current(degraded) and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = degraded.message or obj.status.failureReason or "Endpoint degraded"
  return hs
end
local progressing = conditions["Progressing"]
if phase ~= "InService" or (current(progressing) and progressing.status == "True") then
  hs.message = "Phase " .. (phase ~= "" and phase or "unknown")
  if current(progressing) and progressing.message ~= nil and progressing.message ~= "" then
    hs.message = hs.message .. ": " .. progressing.message
  end
  return hs
end
local ready = conditions["Ready"]
if current(ready) and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = "InService: " .. (obj.status.endpointConfigName or "")
  return hs
end
hs.message = (ready and ready.message) or "Waiting for the Ready condition"
return hs
