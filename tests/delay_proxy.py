"""A TCP relay that delays every byte by a fixed time in each direction: latency for the
several-hosts tests where the kernel has no netem. Run inside a test's namespace:

    python -m tests.delay_proxy LISTEN_HOST:PORT TARGET_HOST:PORT SECONDS
"""

from __future__ import annotations

import asyncio
import sys


async def pipe(reader, writer, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` seconds after it arrived, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def later():
        while (item := await queue.get()) is not None:
            due, data = item
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(later())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, data))
    finally:
        queue.put_nowait(None)
        await sender


async def main(listen: str, target: str, delay: float) -> None:
    host, port = target.rsplit(":", 1)

    async def relay(client_reader, client_writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, upstream_writer, delay),
                             pipe(upstream_reader, client_writer, delay),
                             return_exceptions=True)

    lhost, lport = listen.rsplit(":", 1)
    server = await asyncio.start_server(relay, lhost, int(lport))
    print("relaying", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
