"""vlmq's client side, the `vlmq-client` distribution (`pip install ./shared/client`):
`vlmq.client` (the HTTP client) and `vlmq.backfill` (`vlmq-backfill`, the same command as
the server's `vlmq backfill`).

Both talk to a vlmq server over HTTP only, so nothing here imports the server's packages.
"""
