-- ARGV: ns, then ids: remove their records (a publish that failed).
for i = 2, #ARGV do
  remove(ARGV[i], job_key(ARGV[i]))
end
return 0
