-- Argo CD health of a berth.dev TransformJob: Healthy once Succeeded (every output written),
-- Degraded when Failed, Progressing while Pending or Running or before the operator saw it.
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
local phase = obj.status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Succeeded"
  if obj.status.recordsDone ~= nil then
    hs.message = hs.message .. ": " .. tostring(obj.status.recordsDone) .. " records"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = obj.status.failureReason or "Failed"
else
  hs.message = "Phase " .. (phase or "unknown")
  if obj.status.failureReason ~= nil and obj.status.failureReason ~= "" then
    hs.message = hs.message .. ": " .. obj.status.failureReason
  end
end
return hs
