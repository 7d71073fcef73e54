#!/usr/bin/env python3
"""One FastCGI GET to each of many unix sockets, timed from connect to END_REQUEST.

usage: fcgi-cold.py SCRIPT_FILENAME SOCKET...
Prints "median_ms p99_ms max_ms failures". Used by scripts/bench-many-pools.sh for the cold
first request of each pool (no worker yet), so one process times them all: no interpreter
start-up per request.
"""
import socket
import struct
import sys
import time


def record(kind, content, request_id=1):
    padding = (8 - len(content) % 8) % 8
    return struct.pack("!BBHHBx", 1, kind, request_id, len(content), padding) + content + b"\0" * padding


def pair(name, value):
    def length(n):
        return bytes([n]) if n < 128 else struct.pack("!I", n | 0x80000000)

    return length(len(name)) + length(len(value)) + name + value


def ask(path, script):
    params = b"".join(
        pair(k.encode(), v.encode())
        for k, v in [
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_FILENAME", script),
            ("SCRIPT_NAME", "/" + script.rsplit("/", 1)[-1]),
            ("REQUEST_URI", "/"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("GATEWAY_INTERFACE", "CGI/1.1"),
        ]
    )
    request = record(1, struct.pack("!HB5x", 1, 0)) + record(4, params) + record(4, b"") + record(5, b"")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    started = time.perf_counter()
    s.connect(path)
    s.sendall(request)
    data = b""
    ok = False
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
        # Walk the records received so far looking for END_REQUEST.
        at = 0
        while at + 8 <= len(data):
            _, kind, _, clen, plen = struct.unpack("!BBHHB", data[at:at + 7])
            if at + 8 + clen + plen > len(data):
                break
            if kind == 6 and b"Hello" in data[at + 8:at + 8 + clen]:
                ok = True
            if kind == 3:
                elapsed = time.perf_counter() - started
                s.close()
                return elapsed, ok
            at += 8 + clen + plen
    s.close()
    return time.perf_counter() - started, False


def main():
    script, sockets = sys.argv[1], sys.argv[2:]
    times, failures = [], 0
    for path in sockets:
        try:
            elapsed, ok = ask(path, script)
        except OSError:
            failures += 1
            continue
        if not ok:
            failures += 1
        times.append(elapsed * 1000)
    times.sort()
    if not times:
        print("nan nan nan", failures)
        return
    median = times[len(times) // 2]
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"{median:.2f} {p99:.2f} {times[-1]:.2f} {failures}")


if __name__ == "__main__":
    main()
