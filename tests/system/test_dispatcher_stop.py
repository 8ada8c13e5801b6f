"""A webhook dispatcher stopped at any moment of its life exits at once, with 0.

Found by the rolling restart: a dispatcher stopped moments after it started
hung until SIGKILL. nats-py's requests drop a cancellation that arrives with
the reply (Python 3.11's `asyncio.wait_for`), so a loop cancelled during a
`consumer_info` went on for good; every loop now ends on the stop flag.
"""

import signal
import subprocess
from collections.abc import Callable

import pytest

from tests.harness import System
from tests.system.test_webhooks import SECRET
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

STARTS = 10


async def test_a_dispatcher_stopped_right_after_it_starts_exits_at_once(
    make_system: Callable[..., System],
) -> None:
    system = make_system()
    await system.start()
    for _ in range(STARTS):
        dispatcher = system.start_webhooks(
            WEBHOOK_URL="http://127.0.0.1:9/hooks", WEBHOOK_SECRET=SECRET
        )
        await eventually(lambda d=dispatcher: "delivering to" in d.log(), timeout=30)
        assert dispatcher.process is not None
        dispatcher.process.send_signal(signal.SIGTERM)
        try:
            code = dispatcher.process.wait(timeout=8)
        except subprocess.TimeoutExpired:
            code = dispatcher.stop(timeout=1)
        assert code == 0, dispatcher.log()[-3000:]
        assert "did not end" not in dispatcher.log()
