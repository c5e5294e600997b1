"""Layer 6, quality: the Great Expectations gate (checks, suites, gate, report, Data Docs), the warning
rules and their evaluation, the policy files, freshness."""
