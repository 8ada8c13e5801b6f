"""edge.calls_proxy forward: what an upstream Calls request is retried on
(httpx's MockTransport answers from a script; the backoff is real, 0.2 s).

A connection that failed reached nothing and is always retried; a timeout,
another transport error, 429 and 5xx are retried only for calls that create
nothing. What is left at the end maps to 502 / 504, or comes back as it is."""

import httpx
import pytest

from edge.calls_proxy import CallsProxy
from edge.errors import ApiError
from edge.settings import EdgeSettings

SETTINGS = EdgeSettings.from_env(
    {
        "JWT_SECRET": "x" * 40,
        "CLOUDFLARE_APP_ID": "app",
        "CLOUDFLARE_APP_SECRET": "app-secret",
        "CALLS_API_URL": "http://calls.invalid/v1",
        "CALLS_RETRIES": "2",
    }
)
Step = int | type[httpx.HTTPError]


class Upstream:
    """Answers each request with the next step: a status (a JSON body) or an
    httpx error to raise; then 200."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        assert request.headers["authorization"] == "Bearer app-secret"
        step = self.steps.pop(0) if self.steps else 200
        if isinstance(step, int):
            return httpx.Response(step, json={"status": step})
        raise step("scripted", request=request)


async def forward(upstream: Upstream, *, creates: bool) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as http:
        proxy = CallsProxy(SETTINGS, bus=None, tokens=None, http=http)  # type: ignore[arg-type]
        method = "POST" if creates else "GET"
        return await proxy.forward(method, "/sessions/s", b"{}", creates=creates)


@pytest.mark.parametrize("creates", [False, True])
async def test_a_failed_connection_is_always_retried(creates: bool) -> None:
    upstream = Upstream(httpx.ConnectError, httpx.ConnectTimeout)
    assert (await forward(upstream, creates=creates)).status_code == 200
    assert upstream.requests == 3


async def test_overload_timeouts_and_transport_errors_are_retried_for_safe_calls() -> None:
    for steps in ((503, 429), (httpx.ReadTimeout,), (httpx.RemoteProtocolError,)):
        upstream = Upstream(*steps)
        assert (await forward(upstream, creates=False)).status_code == 200
        assert upstream.requests == len(steps) + 1


@pytest.mark.parametrize(
    ("step", "status"),
    [(503, None), (httpx.ReadTimeout, 504), (httpx.RemoteProtocolError, 502)],
)
async def test_a_create_is_not_retried_once_it_may_have_arrived(
    step: Step, status: int | None
) -> None:
    upstream = Upstream(step)
    if status is None:
        assert (await forward(upstream, creates=True)).status_code == step
    else:
        with pytest.raises(ApiError) as refused:
            await forward(upstream, creates=True)
        assert refused.value.status_code == status
    assert upstream.requests == 1


@pytest.mark.parametrize(
    ("step", "status"),
    [(502, None), (httpx.ReadTimeout, 504), (httpx.ConnectError, 502)],
)
async def test_what_persists_after_the_retries_comes_back(step: Step, status: int | None) -> None:
    upstream = Upstream(step, step, step, step)
    if status is None:
        response = await forward(upstream, creates=False)
        assert response.json() == {"status": 502}
    else:
        with pytest.raises(ApiError) as refused:
            await forward(upstream, creates=False)
        assert refused.value.status_code == status
    assert upstream.requests == 3  # CALLS_RETRIES=2
