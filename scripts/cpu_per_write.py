"""Drives a fixed number of writes against a running order-status service, for scripts/cpu-per-write.sh.

Each of C keep-alive connections creates its orders and walks each through paid, processing,
shipped and delivered: five writes per order, the mix of the writes benchmark. The same count
and concurrency every run, so callgrind's instruction totals of two runs compare. Standard library only.

    python3 scripts/cpu_per_write.py URL ORDERS CONNECTIONS PREFIX
"""

import http.client
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


def main():
    url, orders, connections, prefix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    parts = urllib.parse.urlsplit(url)
    failures = []
    ids = [f"{prefix}-{n}" for n in range(orders)]
    threads = [
        threading.Thread(target=writer, args=(parts.hostname, parts.port, ids[c::connections], failures))
        for c in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        print(f"cpu_per_write: {len(failures)} writes failed, first: {failures[0]}", file=sys.stderr)
        sys.exit(1)
    print(orders * (1 + len(WALK)))


if __name__ == "__main__":
    main()
