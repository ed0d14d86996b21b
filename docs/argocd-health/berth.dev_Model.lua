-- Argo CD health of a berth.dev Model: Healthy when the operator accepted it (Ready),
-- Degraded when Ready is False (its spec is invalid), Progressing until then.
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
        hs.message = "Accepted"
      elseif condition.status == "False" then
        hs.status = "Degraded"
        hs.message = condition.message or condition.reason or "Not accepted"
      end
      return hs
    end
  end
end
return hs
