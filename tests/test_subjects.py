"""bus_schema.subjects: the partition hash equals nats-server's partition() mapping,
and no id can change a subject's shape."""

import asyncio
from pathlib import Path

import nats
import pytest

from bus_schema import ids, subjects
from signaling.natsserver import NatsServer


def test_fnv1a32_known_vectors() -> None:
    assert subjects.fnv1a32(b"") == 0x811C9DC5
    assert subjects.fnv1a32(b"a") == 0xE40C292C
    assert subjects.fnv1a32(b"foobar") == 0xBF9CF968


@pytest.mark.parametrize("bad", ["a.b", "*", ">", "has space", "", "x\n", "ABC"])
def test_ids_that_would_change_a_subject_are_refused(bad: str) -> None:
    with pytest.raises(subjects.InvalidSubjectToken):
        subjects.room_events(bad)
    with pytest.raises(subjects.InvalidSubjectToken):
        subjects.peer(ids.new_id(), bad)
    with pytest.raises(subjects.InvalidSubjectToken):
        subjects.room_command(bad)


async def test_partition_matches_the_servers_mapping(tmp_path: Path) -> None:
    config = tmp_path / "mapping.conf"
    config.write_text(
        f'mappings {{ "probe.*": "mapped.{{{{partition({subjects.PARTITIONS},1)}}}}'
        '.{{wildcard(1)}}" }\n'
    )
    server = NatsServer(data_dir=tmp_path, config_file=config).start()
    try:
        nc = await nats.connect(server.url)
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
