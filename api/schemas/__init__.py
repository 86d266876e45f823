"""API request and response schemas: `native` (the /v1/jobs family) and `openai` (files,
batches). Import from the submodule; this package re-exports nothing."""
