"""smc-traffic: test traffic through the embedded SMC-R stack (bulk, rr, crr)."""
