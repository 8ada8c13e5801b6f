"""The launcher, on top of every role: ``signaling dev|edge|actors|webhooks|
admin-token`` (`signaling.cli`) and the nats-server it starts for ``signaling
dev`` and the tests (`signaling.natsserver`, with the NATS users of
``nats_auth.conf``). Nothing below imports it.
"""
