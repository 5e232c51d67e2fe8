"""Small-GET latency probe: one keep-alive mTLS connection, a GET of /bkt/small due
every 5 ms for SECS seconds; prints n, p50, p99, max in ms. Latency is counted from
when a GET was due, not when it could be sent (open loop), so a stall shows as every
GET it delayed (no coordinated omission). With STALL, that shell command runs in the
background once the probe has started.

    python3 probe.py DIR PORT SECS [STALL]
"""
import http.client, ssl, subprocess, sys, time

d, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stall = sys.argv[4] if len(sys.argv) > 4 else ""
ctx = ssl.create_default_context(cafile=f"{d}/pki/ca.crt")
ctx.load_cert_chain(f"{d}/pki/alice.crt", f"{d}/pki/alice.key")
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)


def get():
    c.request("GET", "/bkt/small")
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status


get()
lat = []
p = subprocess.Popen(stall, shell=True) if stall else None
t0 = time.perf_counter()
k = 0
while time.perf_counter() - t0 < secs:
    due = t0 + k * 0.005
    k += 1
    now = time.perf_counter()
    if now < due:
        time.sleep(due - now)
    get()
    lat.append((time.perf_counter() - due) * 1e3)
if p:
    p.wait()
lat.sort()
q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]
print(f"n={len(lat)} p50={q(.5):.2f}ms p99={q(.99):.2f}ms max={lat[-1]:.2f}ms")
