-- Argo CD health of a berth.dev EndpointConfig: Healthy when Ready (every Model it names
-- exists); Degraded when its spec is invalid; Progressing while Models are still missing
-- (they are usually applied in the same sync) or the operator has not seen it yet.
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
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" then
      if condition.status == "True" then
        hs.status = "Healthy"
        hs.message = "All Models found"
      elseif condition.reason == "InvalidSpec" then
        hs.status = "Degraded"
        hs.message = condition.message or "Invalid spec"
      else
        hs.message = condition.message or "Not ready"
      end
      return hs
    end
  end
end
return hs
