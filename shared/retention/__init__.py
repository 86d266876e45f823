"""Retention and deletion: what vlmq stores goes away when it is due or asked to."""
