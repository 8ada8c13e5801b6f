"""Webhook dispatchers: deliver the durable room event log (``SIGNALING_LOG``)
to ``WEBHOOK_URL``, signed, at least once, in per-room order."""
