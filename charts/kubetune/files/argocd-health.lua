-- Argo CD health check for kubetune.io/FineTuneJob.
-- Install as argocd-cm `resource.customizations.health.kubetune.io_FineTuneJob` (docs/gitops.md).
-- Succeeded -> Healthy; Pending/Planning/Queued/Running/Evaluating -> Progressing;
-- Failed -> Degraded; Suspended -> Suspended. The message is status.message.
local hs = {}
local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator to pick up the job"
  return hs
end

local function message(default)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  return default
end

local phase = status.phase
-- A spec change the operator has not acted on yet: the phase describes the old spec.
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil
    and status.observedGeneration < generation
    and phase ~= "Succeeded" and phase ~= "Failed" then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = message("Fine-tuning succeeded")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message("Fine-tuning failed")
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message("Suspended")
elseif phase == "Pending" or phase == "Planning" or phase == "Queued"
    or phase == "Running" or phase == "Evaluating" then
  hs.status = "Progressing"
  hs.message = message(phase)
  -- Stalled=True (kstatus) while not yet Failed: stuck until someone acts.
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.type == "Stalled" and c.status == "True" then
        hs.status = "Degraded"
        if c.message ~= nil and c.message ~= "" then
          hs.message = c.message
        end
      end
    end
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
