"""Drives a fixed amount of work against a running order-status service, for scripts/cpu-per-write.sh.

writes: each of C keep-alive connections creates its orders and walks each through paid,
processing, shipped and delivered: five writes per order, the mix of the writes benchmark.
streams: C connections in turn open a stream from Last-Event-ID 0 on one of ORDERS orders walked
to shipped (an order page's open: the replay of four events, then the hub), read the four events
and close it, as a page that leaves does.
The same count and concurrency every run, so callgrind's instruction totals of two runs compare.
Standard library only. Prints the number of operations done.

    python3 scripts/cpu_per_write.py URL ORDERS CONNECTIONS PREFIX [writes|streams-setup|streams]
"""

import http.client
import socket
import sys
import threading
import urllib.parse

WALK = ("paid", "processing", "shipped", "delivered")


def writer(host, port, orders, failures):
    connection = http.client.HTTPConnection(host, port, timeout=600)
    headers = {"Content-Type": "application/json"}

    def post(path, body):
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status not in (200, 201):
            failures.append(f"POST {path} answered {response.status}")

    for order in orders:
        post("/orders", '{"id":"%s"}' % order)
        for status in WALK:
            post(f"/orders/{order}/status", '{"status":"%s"}' % status)
    connection.close()


# Order pages opened per order in the streams mode.
OPENS_PER_ORDER = 4


def setup_streams(host, port, orders, failures):
    """Creates the orders and walks each to shipped, so a stream's replay is four events."""
    connection = http.client.HTTPConnection(host, port, timeout=600)
    headers = {"Content-Type": "application/json"}
    for order in orders:
        for path, body in [("/orders", '{"id":"%s"}' % order)] + [
            (f"/orders/{order}/status", '{"status":"%s"}' % status) for status in WALK[:3]
        ]:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status not in (200, 201):
                failures.append(f"POST {path} answered {response.status}")
    connection.close()


def open_streams(host, port, orders, failures):
    """Opens each order's stream OPENS_PER_ORDER times, reads its replay and closes it."""
    for order in orders * OPENS_PER_ORDER:
        with socket.create_connection((host, port), timeout=600) as stream:
            stream.sendall(f"GET /events/order-status/{order} HTTP/1.1\r\nHost: cpw\r\nLast-Event-ID: 0\r\n\r\n".encode())
            received = b""
            while received.count(b"\nid: ") < len(WALK):
                chunk = stream.recv(65536)
                if not chunk:
                    failures.append(f"stream of {order} ended after {received[:200]!r}")
                    break
                received += chunk


def main():
    url, orders, connections, prefix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    mode = sys.argv[5] if len(sys.argv) > 5 else "writes"
    work, done = {
        "writes": (writer, orders * (1 + len(WALK))),
        "streams-setup": (setup_streams, orders),
        "streams": (open_streams, orders * OPENS_PER_ORDER),
    }[mode]
    parts = urllib.parse.urlsplit(url)
    failures = []
    ids = [f"{prefix}-{n}" for n in range(orders)]
    threads = [
        threading.Thread(target=work, args=(parts.hostname, parts.port, ids[c::connections], failures))
        for c in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        print(f"cpu_per_write: {len(failures)} operations failed, first: {failures[0]}", file=sys.stderr)
        sys.exit(1)
    print(done)


if __name__ == "__main__":
    main()
