-- Argo CD health check for kubetune.io/FineTuneJob.
-- Install as argocd-cm `resource.customizations.health.kubetune.io_FineTuneJob` (docs/gitops.md).
-- It reads a job as Flux's kstatus does: a generation the operator has not observed yet ->
-- Progressing; Succeeded -> Healthy; Failed, or Stalled=True -> Degraded; Suspended ->
-- Suspended; Pending/Planning/Queued/Running/Evaluating -> Progressing. The message is
-- status.message (step, loss and ETA while training).
local hs = {}
local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator to pick up the job"
  return hs
end

-- A spec change the operator has not acted on yet: the phase describes the old spec.
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil
    and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local function message(default)
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  return default
end

-- Stalled=True: the job cannot get further by itself (a person must act, or it has waited
-- for capacity past the operator's grace period).
local stalled = nil
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "Stalled" and c.status == "True" then
      stalled = c
    end
  end
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = message("Fine-tuning succeeded")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message("Fine-tuning failed")
elseif stalled ~= nil then
  hs.status = "Degraded"
  if stalled.message ~= nil and stalled.message ~= "" then
    hs.message = stalled.message
  else
    hs.message = message("Stalled")
  end
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message("Suspended")
elseif phase == "Pending" or phase == "Planning" or phase == "Queued"
    or phase == "Running" or phase == "Evaluating" then
  hs.status = "Progressing"
  hs.message = message(phase)
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
