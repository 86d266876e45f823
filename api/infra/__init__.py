"""What the API process runs on, apart from any one resource: tenant quotas and rates, the
terminal-state watch that wakes long polls, the decoded-image memory budget, the API-key
cache, request body and header limits, and its metrics."""
