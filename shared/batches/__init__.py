"""OpenAI-format files and batches: each line of a batch file becomes one job."""
