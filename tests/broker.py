"""A real RabbitMQ (Debian's rabbitmq-server, with its MQTT and HTTP-auth plugins) for the MQTT tests
and bench/mqtt.py: a private node on free loopback ports, its data in a directory of ours, its auth
hooks pointed at a Tenantry server's /mqtt/auth/… (docs/mqtt.md shows the same configuration)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
MAX_MESSAGE = 256 * 1024  # bytes; larger MQTT messages are refused at the broker


def missing() -> str | None:
    """Why no broker can run here, or None."""
    if not SERVER.exists():
        return ("RabbitMQ is not installed (`make test` installs Debian's rabbitmq-server with apt-get where it "
                "may; here it could not)")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(*, hooks: str, amqp: int, mqtt: int, management: int) -> str:
    """rabbitmq.conf: devices authenticate through Tenantry's hooks; the bridge (and guest, on
    loopback only) through RabbitMQ's own user database."""
    return f"""\
listeners.tcp.default = 127.0.0.1:{amqp}
mqtt.listeners.tcp.default = 127.0.0.1:{mqtt}
mqtt.allow_anonymous = false
mqtt.vhost = /
mqtt.exchange = amq.topic
management.tcp.ip = 127.0.0.1
management.tcp.port = {management}
auth_backends.1 = internal
auth_backends.2 = http
auth_http.http_method = post
auth_http.user_path = {hooks}/mqtt/auth/user
auth_http.vhost_path = {hooks}/mqtt/auth/vhost
auth_http.resource_path = {hooks}/mqtt/auth/resource
auth_http.topic_path = {hooks}/mqtt/auth/topic
max_message_size = {MAX_MESSAGE}
collect_statistics_interval = 1000
"""


class Broker:
    def __init__(self, base: Path, hooks: str) -> None:
        self.base = base
        self.amqp, self.mqtt, self.management, self.dist = free_port(), free_port(), free_port(), free_port()
        self.node = f"tenantry{self.amqp}@localhost"
        (base / "home").mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq.conf").write_text(config(hooks=hooks, amqp=self.amqp, mqtt=self.mqtt,
                                                   management=self.management))
        (base / "enabled_plugins").write_text("[rabbitmq_mqtt,rabbitmq_auth_backend_http,rabbitmq_management].\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp}/"

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management}"

    def _env(self) -> dict[str, str]:
        b = self.base
        return {**os.environ, "HOME": str(b / "home"), "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_PORT": str(self.amqp), "RABBITMQ_DIST_PORT": str(self.dist),
                "RABBITMQ_MNESIA_BASE": str(b / "mnesia"), "RABBITMQ_LOG_BASE": str(b / "log"),
                "RABBITMQ_CONFIG_FILE": str(b / "rabbitmq"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(b / "enabled_plugins"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(b / "advanced.config")}

    def start(self, timeout: float = 90.0) -> None:
        log = (self.base / "server.log").open("ab")
        self.process = subprocess.Popen([str(SERVER)], env=self._env(), stdout=log, stderr=log,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"RabbitMQ exited: see {self.base / 'server.log'}")
            if all(_listening(port) for port in (self.amqp, self.mqtt, self.management)):
                return
            time.sleep(0.2)
        raise RuntimeError(f"RabbitMQ did not start in {timeout:.0f} s: see {self.base / 'server.log'}")

    def stop(self) -> None:
        """A clean stop (what persists is on disk)."""
        if self.process is None:
            return
        ctl = SERVER.parent / "rabbitmqctl"
        subprocess.run([str(ctl), "-n", self.node, "stop"], env=self._env(), capture_output=True, timeout=60,
                       check=False)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
