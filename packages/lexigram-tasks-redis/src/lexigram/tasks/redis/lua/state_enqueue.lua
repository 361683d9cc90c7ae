-- ARGV: ns, then per job: id, fields (JSON). A known id starts a new record.
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local key = job_key(id)
  remove(id, key)
  create(id, key, ARGV[i + 1])
end
return #ARGV / 2
