"""Identity's rules, free of I/O: password policy, tokens, roles, statuses, throttling arithmetic."""
