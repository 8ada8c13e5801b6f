"""Process entry points and what every process shares.

``signaling dev|edge|actors`` (`signaling.cli`), the nats-server launcher used by
``signaling dev`` and by the tests (`signaling.natsserver`), environment parsing
(`signaling.config`) and the NATS connection helper (`signaling.natsconn`).
"""
