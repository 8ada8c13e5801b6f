"""The partition of a room, as edges and actors compute it, equals nats-server's
own ``partition()`` subject mapping (a real server decides)."""

import asyncio
from pathlib import Path

import nats

from bus_schema import ids, subjects
from signaling.natsserver import NatsServer
from tests.harness import opened


async def test_partition_matches_the_servers_mapping(tmp_path: Path) -> None:
    config = tmp_path / "mapping.conf"
    config.write_text(
        f'mappings {{ "probe.*": "mapped.{{{{partition({subjects.PARTITIONS},1)}}}}'
        '.{{wildcard(1)}}" }\n'
    )
    server = NatsServer(data_dir=tmp_path, config_file=config).start()
    try:
        nc = opened(await nats.connect(server.url))
        received: asyncio.Queue[str] = asyncio.Queue()

        async def on_message(msg: nats.aio.msg.Msg) -> None:
            await received.put(msg.subject)

        await nc.subscribe("mapped.>", cb=on_message)
        for _ in range(50):
            room_id = ids.new_id()
            await nc.publish(f"probe.{room_id}", b"")
            subject = await asyncio.wait_for(received.get(), 5)
            assert subject == f"mapped.{subjects.partition_of(room_id)}.{room_id}"
        await nc.close()
    finally:
        server.stop()
