-- Record a running job's progress while ARGV[3] ("<token> <id>") still holds
-- its lease. ARGV: 4 the fraction ('' unchanged), 5 whether a message is
-- given (1/0), 6 the message, then pairs of a metadata key and its JSON
-- value, each stored in its own field (lx_meta.<key>), so merging is a
-- plain HSET. Returns 1, or 0 when the lease is no longer held.
local id, token = split_lease(ARGV[3])
local key = JOB_PREFIX .. id
if redis.call('HGET', key, 'lx_token') ~= token then return 0 end
local fields = {}
if ARGV[4] ~= '' then
  fields[#fields + 1] = 'lx_progress'
  fields[#fields + 1] = ARGV[4]
end
if ARGV[5] == '1' then
  fields[#fields + 1] = 'lx_progress_message'
  fields[#fields + 1] = ARGV[6]
end
for i = 7, #ARGV, 2 do
  fields[#fields + 1] = 'lx_meta.' .. ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
end
if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
return 1
