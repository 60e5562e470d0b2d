"""What the store's named prepared statements save against unnamed ones, directly and behind PgBouncer
(deploy/pgbouncer/pgbouncer.ini, as scripts/pgbouncer-test.sh runs it). For each configuration, in
alternating rounds, a fresh service runs `order-status-load writes`; CPU per change comes from
/proc over the timed part: the service, PostgreSQL (the postmaster of PGDATA and its children, with
reaped ones) and PgBouncer. Behind PgBouncer only `unnamed` runs: `prepared` fails there.

  DATABASE_URL=postgres://postgres@127.0.0.1:PORT/db PGDATA=/path/to/cluster \\
      python3 scripts/bench/pgbouncer_statements.py [rounds] [seconds]

ORDER_STATUS_BIN and ORDER_STATUS_LOAD_BIN name the binaries (default: .build/debug/...)."""

import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from live_service import ROOT, ServiceProcess, database_url  # noqa: E402
from pgbouncer_test import PgBouncer  # noqa: E402

LOAD = os.environ.get("ORDER_STATUS_LOAD_BIN", os.path.join(ROOT, ".build", "debug", "order-status-load"))
TICK = os.sysconf("SC_CLK_TCK")


def ticks(pid, children=True):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # utime, stime, then cutime, cstime (those of reaped children) from field 14 on.
    return sum(int(value) for value in fields[11:15 if children else 13])


def cluster_ticks(pgdata):
    with open(os.path.join(pgdata, "postmaster.pid")) as pidfile:
        postmaster = int(pidfile.readline())
    total = ticks(postmaster)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            if parent == postmaster:
                total += ticks(int(entry))
        except (OSError, ValueError):
            continue
    return total


class Sampler:
    """CPU ticks of PostgreSQL and PgBouncer every 50 ms, to read off over the load tool's timed
    part (it creates its orders first, which must not count)."""

    def __init__(self, pgdata, bouncer):
        self.pgdata, self.bouncer = pgdata, bouncer
        self.samples = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            self.samples.append((time.monotonic(), cluster_ticks(self.pgdata), ticks(self.bouncer.pid, False) if self.bouncer else 0))
            time.sleep(0.05)

    def stop(self):
        self.running = False
        self.thread.join()

    def at(self, moment):
        return min(self.samples, key=lambda sample: abs(sample[0] - moment))


def run(label, settings, pgdata, bouncer, seconds):
    service = ServiceProcess(settings={"DATABASE_POOL_SIZE": "8", **settings}, name=label).start()
    sampler = Sampler(pgdata, bouncer)
    try:
        done = subprocess.run([LOAD, "writes", "--url", service.base_url, "--writers", "32", "--seconds", str(seconds),
                               "--server-pid", str(service.process.pid)], capture_output=True, text=True, timeout=seconds + 300)
        ended = time.monotonic()
    finally:
        sampler.stop()
        service.stop()
        service.remove_log()
    output = done.stdout + done.stderr
    found = re.search(r"writes: (\d+) changes in ([0-9.]+) s", output)
    server = re.search(r"CPU per change: server (\d+) µs", output)
    if done.returncode != 0 or not found or not server:
        raise SystemExit(f"{label}: the load tool failed:\n{output}")
    changes, elapsed = int(found.group(1)), float(found.group(2))
    first, last = sampler.at(ended - elapsed), sampler.at(ended)
    database = (last[1] - first[1]) / TICK * 1e6 / changes
    pooler = (last[2] - first[2]) / TICK * 1e6 / changes
    micros = (int(server.group(1)), database, pooler)
    rate = changes / elapsed
    print(f"{label:18} {changes:6d} changes {rate:5.0f}/s  service {micros[0]:4.0f} µs  PostgreSQL {micros[1]:4.0f} µs  "
          f"PgBouncer {micros[2]:3.0f} µs  (window {last[0] - first[0]:.1f} s of {elapsed:.1f})", flush=True)
    return micros, rate


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    direct = database_url()
    pgdata = os.environ["PGDATA"]
    bouncer = PgBouncer(direct).start()
    try:
        configurations = [
            ("direct prepared", {"DATABASE_STATEMENTS": "prepared"}, None),
            ("direct unnamed", {"DATABASE_STATEMENTS": "unnamed"}, None),
            ("pgbouncer unnamed", {"DATABASE_STATEMENTS": "unnamed", "DATABASE_URL": bouncer.url(), "DATABASE_LISTEN_URL": direct}, bouncer),
        ]
        results = {label: [] for label, _, _ in configurations}
        for _ in range(rounds):
            for label, settings, via in configurations:
                results[label].append(run(label, settings, pgdata, via, seconds))
        print("medians:")
        for label, values in results.items():
            median = lambda items: sorted(items)[len(items) // 2]  # noqa: E731
            print(f"{label:22} {median([v[1] for v in values]):7.0f}/s  service {median([v[0][0] for v in values]):5.0f} µs  "
                  f"PostgreSQL {median([v[0][1] for v in values]):5.0f} µs  PgBouncer {median([v[0][2] for v in values]):4.0f} µs")
    finally:
        bouncer.stop()
        bouncer.remove()


if __name__ == "__main__":
    main()
