#!/usr/bin/env python3
"""Opens N keep-alive connections to keybridge, sends one GET on each, then holds them
open for HOLD seconds. PARALLEL (default: all N) bounds how many connect and send at
once: all at once is a thundering herd (N requests to Coupa at the same instant, which
fills the upstream pool); a few at a time is how idle connections pile up in practice.
Usage: idle_conns.py KEY PORT N HOLD [PARALLEL]"""
import asyncio, sys
KEY = sys.argv[1]; PORT = int(sys.argv[2]); N = int(sys.argv[3]); HOLD = float(sys.argv[4])
PARALLEL = int(sys.argv[5]) if len(sys.argv) > 5 else N
async def one(i, gate):
    async with gate:
        r, w = await asyncio.open_connection("127.0.0.1", PORT)
        w.write(f"GET /api/invoices/{i} HTTP/1.1\r\nHost: x\r\nX-COUPA-API-KEY: {KEY}\r\n\r\n".encode())
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
        await r.readexactly(n)
        ok = head.startswith(b"HTTP/1.1 200")
    await asyncio.sleep(HOLD)
    w.close()
    return ok
async def main():
    gate = asyncio.Semaphore(PARALLEL)
    res = await asyncio.gather(*[one(i, gate) for i in range(N)])
    print(f"{sum(res)} of {N} ok")
asyncio.run(main())
