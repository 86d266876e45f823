"""The control process (`vlmq control`, CPU only): the sweeper, batch work and webhook
dispatch and delivery (worker/webhooks/)."""
