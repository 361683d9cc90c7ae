-- Append an attempt record (one line of JSON) to the history in hash field
-- `field` of `key`, keeping its last `keep` lines; '' appends nothing. Shared
-- by the queue's scripts and the job state store's settle script.
local function add_attempt(key, field, record, keep)
  if record == '' then return end
  local text = redis.call('HGET', key, field)
  text = text and (text .. '\n' .. record) or record
  local _, breaks = string.gsub(text, '\n', '')
  while breaks >= keep do
    text = string.sub(text, string.find(text, '\n', 1, true) + 1)
    breaks = breaks - 1
  end
  redis.call('HSET', key, field, text)
end
