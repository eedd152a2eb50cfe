-- Argo CD health check for turnout.dev/ModelDeployment.
--
-- Reads what the turnout operator writes through the status subresource: status.phase
-- (Resolving, Deploying, Ready, ScaledToZero, Degraded, Failed), status.observedGeneration and the
-- conditions Resolved, Available, Progressing and Degraded (metav1.Condition shape).
--   Healthy      phase Ready, or ScaledToZero (replicas 0 asked and reached: the autoscaler or
--                kubectl scale did it; the gateway wakes it), or without a phase Available=True and
--                not Progressing
--   Progressing  no status yet, status older than the spec, phase Resolving or Deploying
--   Degraded     phase Failed (the Resolved condition says why), phase Degraded or Degraded=True
-- Written for Lua 5.1 (Argo CD runs gopher-lua); tests/chart runs it against sample objects.
local hs = {status = "Progressing", message = "Waiting for the turnout operator to pick up this ModelDeployment"}

local function condition(conditions, type_)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

-- "Reason: message" of a condition, or the fallback when it has neither.
local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  if reason ~= "" then
    return reason
  end
  return fallback
end

local st = obj.status
if st == nil then
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and (st.observedGeneration == nil or st.observedGeneration < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local resolved = condition(st.conditions, "Resolved")
local available = condition(st.conditions, "Available")
local progressing = condition(st.conditions, "Progressing")
local degraded = condition(st.conditions, "Degraded")
local phase = st.phase

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(resolved, "Failed")
  return hs
end
if phase == "Degraded" or (degraded ~= nil and degraded.status == "True") then
  hs.status = "Degraded"
  hs.message = describe(degraded, "Degraded")
  return hs
end
if phase == "Ready" then
  hs.status = "Healthy"
  hs.message = describe(available, "Ready")
  return hs
end
if phase == "ScaledToZero" then
  hs.status = "Healthy"
  hs.message = describe(available, "Scaled to zero")
  return hs
end
if phase == "Resolving" then
  hs.message = describe(resolved, "Choosing an engine")
  return hs
end
if phase == "Deploying" then
  hs.message = describe(progressing, "Rolling out")
  return hs
end

-- No phase: judge by the conditions alone.
if available ~= nil and available.status == "True" and (progressing == nil or progressing.status ~= "True") then
  hs.status = "Healthy"
  hs.message = describe(available, "Available")
  return hs
end
if progressing ~= nil then
  hs.message = describe(progressing, hs.message)
end
return hs
