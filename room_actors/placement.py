"""Which worker should own which partition: balanced rendezvous hashing.

Every worker computes the same answer from the same set of live workers, so no
coordinator is needed. Each partition goes to the worker with the highest score
for it that still has room (``partitions // workers``, one more for as many
workers as the remainder): loads differ by at most one, and a worker joining or
leaving moves few partitions.
"""

import functools
import hashlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType


def _score(partition: int, worker_id: str) -> int:
    digest = hashlib.blake2b(f"{partition}/{worker_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(partitions: int, workers: Iterable[str]) -> Mapping[int, str]:
    """partition -> worker id, for ``partitions`` partitions over ``workers``.
    Remembered for the last few sets of workers: every worker asks again on
    each change it sees, and a takeover brings many changes for the same set."""
    return _assign(partitions, tuple(sorted(set(workers))))


@functools.lru_cache(maxsize=8)
def _assign(partitions: int, live: tuple[str, ...]) -> Mapping[int, str]:
    if not live:
        return MappingProxyType({})
    floor, extra = divmod(partitions, len(live))
    load = dict.fromkeys(live, 0)
    at_ceiling = 0
    owners: dict[int, str] = {}
    for partition in range(partitions):
        for worker in sorted(live, key=lambda w: _score(partition, w), reverse=True):
            if load[worker] < floor or (load[worker] == floor and at_ceiling < extra):
                if load[worker] == floor:
                    at_ceiling += 1
                owners[partition] = worker
                load[worker] += 1
                break
    return MappingProxyType(owners)
