"""vlmq's Python client, installed as the `vlmq` package: `from vlmq.client import Client`.

It talks to a vlmq server over HTTP only (httpx), so it imports nothing of the server.
"""
