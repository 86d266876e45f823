"""`vlmq-backfill` (also `vlmq backfill`): push a folder, a glob, an S3 prefix or a manifest
of images through a vlmq server with one prompt, into one output file; resumable, with
progress."""
