"""A legacy Coupa integration written in Python, run by tests/clients.rs through keybridge.

    python3 python_flow.py <base-url> <key> <client> [<ca-file>]

<client> is `requests` (HTTP/1.1), `httpx` (HTTP/1.1) or `httpx-h2` (HTTP/2: ALPN on
https://, prior knowledge on http://). It pages XML and JSON, sends Coupa's
fields=[…] query, an XML POST, a 5 MB chunked PUT (a generator body), a PUT with
`Expect: 100-continue` and a gzip GET; prints one line per step, exits 1 on a mismatch.
"""
import hashlib
import sys

BIG = 5 * 1024 * 1024
XML = ('<?xml version="1.0" encoding="UTF-8"?>\n'
       '<invoice-header><invoice-number>INV-7</invoice-number></invoice-header>\n')
FIELDS = '/api/invoices?fields=["id",{"supplier":["name"]}]'


def check(ok, what):
    if not ok:
        print("FAIL " + what)
        sys.exit(1)
    print("ok " + what)


def big():
    return bytes(i % 251 for i in range(BIG))


def chunks(data, size=65536):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def main():
    base, key, client = sys.argv[1], sys.argv[2], sys.argv[3]
    ca = sys.argv[4] if len(sys.argv) > 4 else True
    h = {"X-COUPA-API-KEY": key}
    if client == "requests":
        import requests
        s = requests.Session()
        s.verify = ca
        send = lambda m, p, **kw: s.request(m, base + p, timeout=30, **kw)
    else:
        import httpx
        h2 = client == "httpx-h2"
        s = httpx.Client(http1=not (h2 and base.startswith("http:")), http2=h2, verify=ca, timeout=30)
        send = lambda m, p, **kw: s.request(m, base + p, **kw)

    for accept, needle in (("application/xml", "<invoice-header>"), ("application/json", '"invoice-number"')):
        total, offset = 0, 0
        while True:
            r = send("GET", "/api/invoices?limit=2&offset=%d" % offset, headers={**h, "Accept": accept})
            check(r.status_code == 200, "%s page at offset %d: %d" % (accept, offset, r.status_code))
            n = r.text.count(needle)
            total += n
            offset += 2
            if n < 2:
                break
        check(total == 5, "%s paging saw all 5 invoices (%d)" % (accept, total))
    r = send("GET", FIELDS, headers=h)
    check(r.status_code == 200, "fields=[…] query: %d" % r.status_code)
    r = send("POST", "/api/invoices", headers={**h, "Content-Type": "application/xml"}, content=XML.encode()) \
        if client != "requests" else send("POST", "/api/invoices", headers={**h, "Content-Type": "application/xml"}, data=XML.encode())
    check(r.status_code == 200 and r.text == XML, "XML POST echoed: %d" % r.status_code)
    data = big()
    body = {"content": chunks(data)} if client != "requests" else {"data": chunks(data)}
    r = send("PUT", "/api/invoices/7/image_scan", headers={**h, "Content-Type": "application/octet-stream"}, **body)
    check(r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == hashlib.sha256(data).hexdigest(),
          "5 MB chunked PUT echoed byte-exact: %d" % r.status_code)
    small = bytes(65536)
    kw = {"content": small} if client != "requests" else {"data": small}
    r = send("PUT", "/api/invoices/7", headers={**h, "Expect": "100-continue", "Content-Type": "application/octet-stream"}, **kw)
    check(r.status_code == 200 and len(r.content) == 65536, "PUT with Expect: 100-continue: %d" % r.status_code)
    r = send("GET", "/api/invoices/1", headers={**h, "Accept-Encoding": "gzip"})
    check(r.status_code == 200 and r.headers.get("content-encoding") == "gzip" and "INV-0001" in r.text, "gzip GET decoded")
    r = send("GET", "/api/invoices/1", headers={"X-COUPA-API-KEY": "not-a-key-of-ours"})
    check(r.status_code == 401 and "X-COUPA-API-KEY" in r.headers.get("www-authenticate", ""),
          "an unknown key gets 401 with WWW-Authenticate")
    version = getattr(r, "http_version", None) or "HTTP/1.1"
    print("version " + version)
    print("DONE")


main()
