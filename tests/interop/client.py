"""Interop client (Python `websockets`): subscribe to a channel on a wshub server, then print
each of the next N messages exactly as received, one per line.

Usage: python client.py URL CHANNEL N
"""
import asyncio
import json
import sys

import websockets


async def main(url: str, channel: str, n: int) -> None:
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "channel": channel}))
        await ws.send('{"type":"ping"}')
        while '"type":"pong"' not in await ws.recv():
            pass
        print("READY", flush=True)
        for _ in range(n):
            message = await ws.recv()
            sys.stdout.buffer.write(message.encode("utf-8") + b"\n")
            sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
