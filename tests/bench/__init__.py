"""`make bench`: naive transformers vs raw vLLM vs the full system, in one run."""
