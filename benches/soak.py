#!/usr/bin/env python3
"""Soak: a release fxgate in front of a separate sandbox (a sink that keeps nothing) under a
mixed load for FXGATE_SOAK_SECS (default 600): new files (misses), repeats (stream hits),
digest claims (hits), /cgi/ passthrough calls, errors (401, 415, 413) and callers hanging up
mid-body. RSS, open fds, threads and tokio tasks (`fxgate_runtime_tasks`) are sampled every
10 s; after the warm-up (the first fifth) they must stay flat. Run: bash benches/soak.sh."""

import hashlib
import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "fxgate")
SECS = int(os.environ.get("FXGATE_SOAK_SECS", "600"))
WORKERS = 6
KEY = "soak-caller-key-1c9e"
MAX_ENTRIES = 2000


def listening(proc):
    for line in proc.stdout:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("event") == "listening":
            return ev
    raise SystemExit("no listening line")


def start():
    sandbox = subprocess.Popen([BIN, "sandbox", "--listen", "127.0.0.1:0", "--discard",
                                "--no-path-limit"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    sb = listening(sandbox)
    sb_addr = sb["sandbox"]
    key_hash = hashlib.sha256(KEY.encode()).hexdigest()
    work = tempfile.mkdtemp(prefix="fxgate-soak-")
    path = os.path.join(work, "soak.toml")
    with open(path, "w") as f:
        f.write(f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[log]
format = "json"
[corps.default]
base_url = "http://{sb_addr}"
app_id = "sandbox-app"
app_secret = "sandbox-secret"
permanent_code = "sandbox-permanent-code"
upstream_requests_per_20s = 100000000
[dedupe]
max_entries = {MAX_ENTRIES}
[[clients]]
name = "soak"
key_sha256 = "{key_hash}"
api_style = "legacy"
act_as = ["FSUID_0001"]
""")
    gw = subprocess.Popen([BIN, "serve", "--config", path], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, env={**os.environ, "RUST_LOG": "error"})
    ev = listening(gw)
    port = int(ev["listen"].rsplit(":", 1)[1])
    return sandbox, gw, port, ev["admin"]


def jpeg(n, seed):
    head = b"\xff\xd8\xff\xe0" + seed.to_bytes(8, "big")
    return head + bytes((seed + i) % 251 for i in range(n - len(head)))


FIXED = [jpeg(20_000, 1_000_000 + i) for i in range(50)]
COUNTS = {}
LOCK = threading.Lock()


def count(name):
    with LOCK:
        COUNTS[name] = COUNTS.get(name, 0) + 1


def request(conn, method, path, body=b"", headers=None):
    conn.request(method, path, body, {"Authorization": f"Bearer {KEY}", **(headers or {})})
    r = conn.getresponse()
    r.read()
    return r.status


def worker(port, wid, deadline):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    n = 0
    while time.monotonic() < deadline:
        n += 1
        op = n % 8
        try:
            if op in (0, 1):
                s = request(conn, "POST", "/media/upload?type=image&filename=n.jpg",
                            jpeg(20_000, wid * 10_000_000 + n), {"Content-Type": "image/jpeg"})
                count(f"miss {s}")
            elif op == 2:
                s = request(conn, "POST", "/media/upload?type=image&filename=r.jpg",
                            FIXED[n % 50], {"Content-Type": "image/jpeg"})
                count(f"repeat {s}")
            elif op == 3:
                f = FIXED[n % 50]
                d = "sha-256=:" + base64.b64encode(hashlib.sha256(f).digest()).decode() + ":"
                s = request(conn, "POST", "/media/upload?type=image&filename=r.jpg", f,
                            {"Content-Type": "image/jpeg", "Repr-Digest": d})
                count(f"claim {s}")
            elif op == 4:
                body = json.dumps({"toUser": ["FSUID_0001"], "msgType": "text",
                                   "text": {"content": f"soak {n}"}}).encode()
                s = request(conn, "POST", "/cgi/message/send", body,
                            {"Content-Type": "application/json"})
                count(f"passthrough {s}")
            elif op == 5:
                conn.request("POST", "/media/upload/message", b"x",
                             {"Authorization": "Bearer wrong", "Content-Type": "image/jpeg"})
                r = conn.getresponse()
                r.read()
                count(f"bad key {r.status}")
            elif op == 6:
                s = request(conn, "POST", "/media/upload/message", b"plain text",
                            {"Content-Type": "text/plain"})
                count(f"bad type {s}")
            else:
                # A caller that hangs up mid-body.
                with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                    raw.sendall((f"POST /media/upload?type=image&filename=h.jpg HTTP/1.1\r\n"
                                 f"Host: x\r\nAuthorization: Bearer {KEY}\r\n"
                                 f"Content-Type: image/jpeg\r\nContent-Length: 200000\r\n\r\n"
                                 ).encode() + jpeg(50_000, n))
                count("hang-up")
        except Exception as e:
            count(f"client error {type(e).__name__}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)


def sample(pid, admin):
    status = open(f"/proc/{pid}/status").read()
    field = lambda k: int(next(l.split()[1] for l in status.splitlines() if l.startswith(k)))
    tasks = -1
    try:
        text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
        tasks = int(next(l.split()[1] for l in text.splitlines()
                         if l.startswith("fxgate_runtime_tasks ")))
    except Exception:
        pass
    return {"rss_mib": field("VmRSS:") / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": field("Threads:"), "tasks": tasks}


def main():
    sandbox, gw, port, admin = start()
    t0 = time.monotonic()
    deadline = t0 + SECS
    threads = [threading.Thread(target=worker, args=(port, w, deadline), daemon=True)
               for w in range(WORKERS)]
    for t in threads:
        t.start()
    samples = []
    print("| t (s) | RSS (MiB) | open fds | threads | tokio tasks | requests so far |")
    print("|---|---|---|---|---|---|", flush=True)
    while time.monotonic() < deadline:
        time.sleep(min(10, max(0, deadline - time.monotonic())))
        s = sample(gw.pid, admin)
        s["t"] = time.monotonic() - t0
        s["ops"] = sum(COUNTS.values())
        samples.append(s)
        print(f"| {s['t']:.0f} | {s['rss_mib']:.1f} | {s['fds']} | {s['threads']} | {s['tasks']} | {s['ops']} |",
              flush=True)
    for t in threads:
        t.join(60)
    idle = sample(gw.pid, admin)
    gw.terminate()
    sandbox.terminate()
    steady = [s for s in samples if s["t"] >= SECS / 5]
    print()
    print("requests by kind and status:", json.dumps(dict(sorted(COUNTS.items()))))
    summary = {}
    for k in ("rss_mib", "fds", "threads", "tasks"):
        vals = [s[k] for s in steady]
        summary[k] = (min(vals), max(vals))
        print(f"after warm-up, {k}: min {min(vals):.1f}, max {max(vals):.1f}; idle after the load: {idle[k]}")
    rss_lo, rss_hi = summary["rss_mib"]
    # Flat: RSS within 15 % (allocator noise) after warm-up; fds and tasks bounded by the load's
    # own connections, and back down once it stops.
    flat = (rss_hi <= rss_lo * 1.15 + 2 and summary["fds"][1] <= summary["fds"][0] + 2 * WORKERS + 8
            and idle["tasks"] <= 32)
    print("flat:", "yes" if flat else "NO")
    errors = sum(v for k, v in COUNTS.items() if k.startswith("client error"))
    # The mix's own requests must succeed: a soak of nothing but errors proves little.
    served = [k for k in COUNTS if k.split()[0] in ("miss", "repeat", "claim", "passthrough")]
    if any(not k.endswith(" 200") for k in served):
        print("NOT SERVED:", [k for k in served if not k.endswith(" 200")])
        errors += 1
    sys.exit(0 if flat and errors == 0 else 1)


if __name__ == "__main__":
    main()
