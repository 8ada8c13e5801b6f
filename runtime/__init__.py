"""What every role's process shares, one floor above `bus_schema` and below the
roles (`edge`, `room_actors`, `webhooks`): settings from the environment
(`settings`: how each is declared once; `config`: those every role shares),
the NATS connection (`natsconn`), JetStream stream helpers (`streams`), NATS
micro services (`services`), logging (`logs`) and the process itself
(`process`: GC tuning, signals, one way to run a role). It imports
nothing of the roles or of the launcher (`signaling`) above it.
"""
