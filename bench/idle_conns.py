#!/usr/bin/env python3
"""Opens N keep-alive connections to keybridge, sends one GET on each, then holds them
open for HOLD seconds. Usage: idle_conns.py KEY PORT N HOLD"""
import asyncio, sys
KEY = sys.argv[1]; PORT = int(sys.argv[2]); N = int(sys.argv[3]); HOLD = float(sys.argv[4])
async def one(i):
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
    res = await asyncio.gather(*[one(i) for i in range(N)])
    print(f"{sum(res)} of {N} ok")
asyncio.run(main())
