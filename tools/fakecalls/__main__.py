"""``python -m tools.fakecalls``: run the Calls stand-in until Ctrl-C."""

import argparse
import asyncio
import contextlib

from tools.fakecalls import FakeCalls, FakeCallsConfig, FakeCallsServer


async def serve(args: argparse.Namespace) -> None:
    config = FakeCallsConfig(
        apps={args.app_id: args.app_secret},
        turn_keys={args.turn_key_id: args.turn_key_token} if args.turn_key_id else {},
    )
    server = await FakeCallsServer(FakeCalls(config), port=args.port).start()
    print(f"fake Calls API on {server.base_url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="A local stand-in for Cloudflare Calls")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--app-secret", required=True)
    parser.add_argument("--turn-key-id", default="")
    parser.add_argument("--turn-key-token", default="")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
