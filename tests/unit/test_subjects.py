"""bus_schema.subjects: the partition hash, and no id can change a subject's shape
(`tests/system/test_nats_mapping.py` checks the hash against nats-server)."""

import pytest

from bus_schema import ids, subjects


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
