"""Shared by the script tests (browser_test.py, nginx_test.py): runs an already built order-status
on a local port against DATABASE_URL, and small HTTP helpers. Standard library only."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICE_BINARY = os.environ.get("ORDER_STATUS_BIN", os.path.join(ROOT, ".build", "debug", "order-status"))


class CheckFailed(Exception):
    """A check of a script test did not hold; the message says what was expected and seen."""


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def say(script, line):
    # Flushed at once so CI shows progress as it happens, even through a pipe.
    print(f"{script}: {line}", flush=True)


def free_port():
    """A port the kernel just gave out; the tiny race until the caller binds it is fine locally."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(what, condition, timeout=10.0, interval=0.02):
    """Polls `condition` until it returns something truthy, which it returns; fails at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise CheckFailed(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def database_url():
    url = os.environ.get("DATABASE_URL")
    if not url:
        sys.exit("DATABASE_URL is not set (scripts/test.sh exports one for its throwaway cluster)")
    return url


def request(base_url, method, path, body=None, headers=None, timeout=10.0):
    """One HTTP/1.1 exchange on a fresh connection: (status, headers as a lowercase dict, body bytes)."""
    parts = urllib.parse.urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def post_json(base_url, path, body, expect_status):
    status, _, data = request(base_url, "POST", path, body, {"Content-Type": "application/json"})
    check(status == expect_status, f"POST {path} answered {status}, not {expect_status}: {data[:300]!r}")
    return json.loads(data)


def metric(base_url, name):
    """One value of the Prometheus text at /metrics."""
    _, _, text = request(base_url, "GET", "/metrics")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise CheckFailed(f"no metric {name} at {base_url}/metrics")


class ServiceProcess:
    """One `order-status serve` child on 127.0.0.1:port, logging to a file; stopped with SIGTERM."""

    def __init__(self, port=None, settings=None, name="order-status"):
        self.port = port or free_port()
        self.settings = settings or {}
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        self.process = None

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_within=60.0):
        if not os.access(SERVICE_BINARY, os.X_OK):
            sys.exit(f"no executable service binary at {SERVICE_BINARY} (swift build, or set ORDER_STATUS_BIN)")
        environment = dict(os.environ, HOST="127.0.0.1", PORT=str(self.port), DATABASE_URL=database_url(), LOG_LEVEL="warning")
        environment.update(self.settings)
        self.process = subprocess.Popen([SERVICE_BINARY, "serve"], cwd=ROOT, env=environment,
                                        stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(f"{self.name} on {self.base_url} to answer /readyz", self._ready, timeout=ready_within, interval=0.1)
        return self

    def _ready(self):
        if self.process.poll() is not None:
            raise CheckFailed(f"{self.name} exited with {self.process.returncode} before it was ready:\n{self.log_tail()}")
        try:
            return request(self.base_url, "GET", "/readyz", timeout=2)[0] == 200
        except OSError:
            return False

    def stop(self, within=20.0):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines=40):
        with open(self.log.name, errors="replace") as log:
            return "".join(log.readlines()[-lines:])

    def remove_log(self):
        os.unlink(self.log.name)
