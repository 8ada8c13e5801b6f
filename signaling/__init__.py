"""The launcher, on top of every role: ``signaling dev|edge|actors|webhooks|
admin-token`` (`signaling.cli`), `signaling.cluster.LocalCluster` (the one place
that starts a local system's processes, for ``signaling dev`` and the tests)
and the nats-server it starts (`signaling.natsserver`, with the NATS users of
``nats_auth.conf``). Nothing below imports it.
"""
