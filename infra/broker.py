"""A local single-node Apache Kafka broker (KRaft, combined broker+controller), fetched from Maven Central.

The jars of `org.apache.kafka:kafka_2.13:<version>` (plus a log4j2 binding) are copied once by Maven into
`<data_dir>/kafka/dist/<version>/lib/`; the broker runs as `java -cp 'lib/*' kafka.Kafka server.properties`
in its own session, so it outlives the CLI that started it. State under `<data_dir>/kafka/`:
`data/` (log.dirs), `config/`, `logs/server.log`, `broker.pid`, `cluster.id`. With an
infra.broker_security.BrokerSecurity it also serves SASL_SSL (SCRAM-SHA-512 over TLS) and enforces ACLs.

Version choice: 4.4.0, the newest release on Maven Central. Checked on 2 cores against aiokafka 0.14.0,
faust-streaming 0.15.3 and confluent-kafka 2.16.1 (Kafka 4.x dropped old protocol versions, KIP-896):

  check                                                     3.9.2  4.1.1  4.4.0
  confluent AdminClient create/list topics                   ok     ok     ok
  confluent produce (idempotent) / consume / group commit    ok     ok     ok
  aiokafka admin create, produce (idempotent, transaction),
    read_committed consume, group commit and resume          ok     ok     ok
  Faust agent + table: its assignor, changelog and leader
    topics created via the admin API, table restored from
    the changelog and offsets resumed after a restart         ok     ok     ok

Nothing broke on 4.x: aiokafka >= 0.13 negotiates protocol versions with ApiVersions, and faust-streaming
0.15 builds its CreateTopics/Metadata requests through that negotiation. One Faust quirk, the same on
3.9.2 and 4.4.0: right after a restart its recovery sometimes re-delivers the last message (at-least-once).
"""

from __future__ import annotations

import base64
import errno
import fcntl
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from infra.broker_security import BrokerSecurity
from streams.settings import Settings

KAFKA_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
LOG4J_VERSION = "2.25.5"
MIN_JAVA = 17
NODE_ID = 1

_HERE = Path(__file__).resolve().parent
_POM_TEMPLATE = _HERE / "kafka_pom.xml.tmpl"
_LOG4J_CONFIG = _HERE / "log4j2.properties"
_MARKER = ".complete"

# JVMs started by this interpreter, kept so stop() can reap them (a killed child stays a zombie,
# and looks alive, until its parent waits on it) and so Popen never warns about a running child.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class BrokerError(RuntimeError):
    """The local broker cannot be fetched, started or stopped; the message says what to do."""


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    version: str
    data_dir: Path  # the broker's log.dirs: where topics and messages are stored
    log_file: Path


class LocalBroker:
    """Fetches, formats, starts and stops one broker whose state lives under `<data_dir>/kafka/`.

    With `security`, the broker also serves a SASL_SSL listener and enforces ACLs (infra.broker_security).
    """

    def __init__(self, settings: Settings, security: BrokerSecurity | None = None) -> None:
        self.settings = settings
        self.security = security
        self.version = settings.kafka_version
        self.root = settings.kafka_dir()
        self.dist_dir = self.root / "dist" / self.version
        self.lib_dir = self.dist_dir / "lib"
        self.log_dirs = self.root / "data"
        self.config_dir = self.root / "config"
        self.logs_dir = self.root / "logs"
        self.server_properties = self.config_dir / "server.properties"
        self.log_file = self.logs_dir / "server.log"
        self.console_file = self.logs_dir / "console.out"  # JVM stdout/stderr: crashes before logging starts
        self.pid_file = self.root / "broker.pid"
        self.cluster_id_file = self.root / "cluster.id"
        self.last_version_file = self.root / "last-version"  # the Kafka version that last served log.dirs

    @property
    def bootstrap(self) -> str:
        return f"{self.settings.broker_host}:{self.settings.broker_port}"

    @property
    def secured_bootstrap(self) -> str | None:
        """host:port of the SASL_SSL listener, when the broker has one."""
        return f"{self.settings.broker_host}:{self.security.port}" if self.security else None

    # --- distribution -------------------------------------------------------------------------

    def ensure_distribution(self, progress: Callable[[str], None] | None = None) -> Path:
        """Copy the broker's jars from Maven Central into `dist/<version>/lib` once; returns the dist dir."""
        say = progress or (lambda _msg: None)
        if self._distribution_ready():
            return self.dist_dir
        mvn = _require_tool(
            "mvn",
            "Maven is needed once to fetch the Kafka broker from Maven Central: "
            "install it (e.g. `apt-get install maven`) and make sure `mvn` is on PATH.",
        )
        self.dist_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.dist_dir / ".lock"):
            if self._distribution_ready():  # another process fetched it while we waited
                return self.dist_dir
            say(f"fetching Apache Kafka {self.version} from Maven Central (once) ...")
            started = time.monotonic()
            self._fetch_jars(mvn)
            (self.dist_dir / _MARKER).write_text(self.version + "\n")
            say(f"Kafka {self.version} ready in {self.lib_dir} ({time.monotonic() - started:.0f}s)")
        return self.dist_dir

    def _distribution_ready(self) -> bool:
        return (self.dist_dir / _MARKER).is_file() and any(self.lib_dir.glob("kafka_2.13-*.jar"))

    def _fetch_jars(self, mvn: str) -> None:
        pom = self.dist_dir / "pom.xml"
        template = string.Template(_POM_TEMPLATE.read_text())
        pom.write_text(template.substitute(kafka_version=self.version, log4j_version=LOG4J_VERSION))
        staging = self.dist_dir / "lib.partial"  # renamed into place only when complete
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-U",  # retry artifacts a failed earlier attempt marked as missing
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        done = subprocess.run(cmd, cwd=self.dist_dir, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise BrokerError(
                f"Maven could not fetch org.apache.kafka:kafka_2.13:{self.version} (exit {done.returncode}). "
                "Check that the version exists and Maven Central (or your mirror in ~/.m2/settings.xml) "
                f"is reachable.\n{_tail(done.stdout + done.stderr)}"
            )
        shutil.rmtree(self.lib_dir, ignore_errors=True)
        staging.rename(self.lib_dir)

    # --- lifecycle ----------------------------------------------------------------------------

    def status(self) -> BrokerStatus:
        pid = self._running_pid()
        return BrokerStatus(
            running=pid is not None,
            pid=pid,
            bootstrap=self.bootstrap,
            # a broker started before kafka_version changed keeps running its own version until restarted
            version=(_cmdline_version(pid) if pid else None) or self.version,
            data_dir=self.log_dirs,
            log_file=self.log_file,
        )

    def start(self, timeout_s: float | None = None) -> BrokerStatus:
        """Start the broker (formatting its storage the first time) and return once it serves requests."""
        timeout = self.settings.broker_start_timeout_s if timeout_s is None else timeout_s
        java = find_java()
        self.root.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.root / ".lock"):
            if self._running_pid() is not None:
                self._wait_ready(None, time.monotonic() + timeout)
                return self.status()
            self._check_ports_free()
            self.ensure_distribution()
            self._write_config()
            self._format_storage(java)
            proc = self._launch(java)
            try:
                self._wait_ready(proc, time.monotonic() + timeout)
            except BaseException:
                self._terminate(proc.pid, grace_s=5)
                raise
            self.last_version_file.write_text(self.version + "\n")
        return self.status()

    def stop(self, timeout_s: float = 30) -> bool:
        """Stop gracefully (SIGTERM: controlled shutdown), SIGKILL after `timeout_s`; True if it was running."""
        pid = self._running_pid()
        if pid is None:
            return False
        self._terminate(pid, grace_s=timeout_s)
        return True

    # --- internals: process -------------------------------------------------------------------

    def _running_pid(self) -> int | None:
        """The pid from the pid file if that process is alive and is our broker; a stale file is removed."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if _is_alive(pid) and self._is_our_broker(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def _is_our_broker(self, pid: int) -> bool:
        """Guards against a recycled pid: the process must run kafka.Kafka on our config file."""
        if not Path("/proc/self/cmdline").exists():  # no procfs (macOS): trust the pid file
            return True
        args = _cmdline(pid)
        return KAFKA_MAIN in args and str(self.server_properties) in args

    def _launch(self, java: str) -> subprocess.Popen[bytes]:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        cmd = [java, *self._jvm_options(), KAFKA_MAIN, str(self.server_properties)]
        with self.console_file.open("ab") as console:
            # own session: the broker outlives the CLI that started it and ignores its Ctrl-C
            proc = subprocess.Popen(
                cmd,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _CHILDREN[proc.pid] = proc
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc

    def _jvm_options(self) -> list[str]:
        heap = self.settings.broker_heap
        return [
            f"-Xms{heap}",
            f"-Xmx{heap}",
            # Kafka's own defaults (kafka-run-class.sh): short GC pauses keep request latency flat
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.config_dir / _LOG4J_CONFIG.name}",
            f"-Dkafka.logs.dir={self.logs_dir}",
            "-cp",
            str(self.lib_dir / "*"),
        ]

    def _terminate(self, pid: int, grace_s: float) -> None:
        """SIGTERM, wait up to grace_s, then SIGKILL; always leaves the process gone and the pid file removed."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if _wait_exit(pid, wait_s):
                break
        else:
            raise BrokerError(f"broker process {pid} survived SIGKILL; check it with `ps -p {pid}`")
        self.pid_file.unlink(missing_ok=True)

    # --- internals: readiness -----------------------------------------------------------------

    def _wait_ready(self, proc: subprocess.Popen[bytes] | None, deadline: float) -> None:
        """Poll a real Kafka round-trip (metadata listing this broker) until it answers or time runs out."""
        from confluent_kafka import KafkaException  # imported late: only the broker lifecycle needs it
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {
                "bootstrap.servers": self.bootstrap,
                "log_level": 0,  # connection-refused lines while the JVM boots are expected, not news
                "reconnect.backoff.ms": 100,
                "reconnect.backoff.max.ms": 500,
            }
        )
        while True:
            if proc is not None and proc.poll() is not None:
                raise BrokerError(
                    f"the Kafka broker exited during startup (exit {proc.returncode})."
                    f"{self._version_hint()}\n{self._log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"the Kafka broker did not answer on {self.bootstrap} in time; "
                    f"raise EXPLORER_BROKER_START_TIMEOUT_S if the machine is slow.\n"
                    f"{self._log_tail()}"
                )
            try:
                # an unfenced, serving broker lists itself in the metadata
                if admin.list_topics(timeout=min(2.0, remaining)).brokers:
                    return
            except KafkaException:
                pass
            time.sleep(0.2)

    def _version_hint(self) -> str:
        """Data written by a newer Kafka cannot be read by an older one: say so instead of a stack trace."""
        try:
            last = self.last_version_file.read_text().strip()
        except FileNotFoundError:
            return ""
        if last == self.version:
            return ""
        return (
            f" Its data in {self.log_dirs} was last served by Kafka {last}, now started with {self.version}: "
            f"if that is older, set EXPLORER_KAFKA_VERSION={last}, or delete {self.root} to start empty."
        )

    def _log_tail(self) -> str:
        parts = [
            f"--- {path} (last lines) ---\n{_tail(path.read_text(errors='replace'))}"
            for path in (self.log_file, self.console_file)
            if path.is_file() and path.stat().st_size
        ]
        return "\n".join(parts) or f"(no broker output in {self.logs_dir})"

    # --- internals: configuration and storage -------------------------------------------------

    def _check_ports_free(self) -> None:
        host = self.settings.broker_host
        ports = [
            ("EXPLORER_BROKER_PORT", self.settings.broker_port),
            ("EXPLORER_BROKER_CONTROLLER_PORT", self.settings.broker_controller_port),
        ]
        if self.security is not None:
            ports.append(("the SASL_SSL port of its BrokerSecurity", self.security.port))
        for name, port in ports:
            if not _port_free(host, port):
                raise BrokerError(
                    f"port {host}:{port} is already in use by another process, not by the broker managed "
                    f"from {self.root}. Stop that process, or pick another port with {name}."
                )

    def _write_config(self) -> None:
        """Rewritten on every start so changed settings apply; the data in log.dirs is untouched."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.server_properties.touch(mode=0o600)  # with security it holds the super user's password
        self.server_properties.write_text(self._server_properties())
        shutil.copyfile(_LOG4J_CONFIG, self.config_dir / _LOG4J_CONFIG.name)

    def _server_properties(self) -> str:
        s = self.settings
        props = {
            "process.roles": "broker,controller",
            "node.id": NODE_ID,
            # a static one-voter quorum: formats the same way on 3.9 and 4.x (no --standalone needed)
            "controller.quorum.voters": f"{NODE_ID}@{s.broker_host}:{s.broker_controller_port}",
            "listeners": f"PLAINTEXT://{s.broker_host}:{s.broker_port},"
            f"CONTROLLER://{s.broker_host}:{s.broker_controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": self.log_dirs,
            "num.partitions": 1,
            "default.replication.factor": 1,
            "min.insync.replicas": 1,
            # stays on: a producer may write before `explorer topics create` ran (Faust itself uses the admin API)
            "auto.create.topics.enable": "true",
            # operators replay topics from the start: keep everything
            "log.retention.ms": -1,
            # internal topics sized for one node: fewer partitions to create, load and index at first use
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            # no waiting for more group members to join: a single local worker starts at once
            "group.initial.rebalance.delay.ms": 0,
            # two cores: fewer threads than the defaults (3 network, 8 io) start faster and contend less
            "num.network.threads": 2,
            "num.io.threads": 4,
            "num.recovery.threads.per.data.dir": 2,
        }
        if self.security is not None:
            props.update(self.security.server_properties(s.broker_host, s.broker_port, s.broker_controller_port))
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def _redacted(self, text: str) -> str:
        """Tool output may echo its arguments, and the SCRAM users' passwords are among them."""
        return self.security.redact(text) if self.security is not None else text

    def _cluster_id(self) -> str:
        """Created once and kept, so re-formatting an emptied log dir joins the same cluster."""
        if self.cluster_id_file.is_file():
            return self.cluster_id_file.read_text().strip()
        cluster_id = _random_kafka_uuid()
        self.cluster_id_file.write_text(cluster_id + "\n")
        return cluster_id

    def _format_storage(self, java: str) -> None:
        if (self.log_dirs / "meta.properties").is_file():
            return
        cmd = [
            java,
            *self._jvm_options(),
            STORAGE_TOOL,
            "format",
            "--ignore-formatted",
            "--cluster-id",
            self._cluster_id(),
            "--config",
            str(self.server_properties),
            *(self.security.format_arguments() if self.security is not None else ()),
        ]
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(cmd, cwd=self.root, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise BrokerError(
                f"formatting the broker storage in {self.log_dirs} failed "
                f"(exit {done.returncode}):\n{self._redacted(_tail(done.stdout + done.stderr))}"
            )
        self.last_version_file.write_text(self.version + "\n")


# --- helpers ----------------------------------------------------------------------------------


def find_java() -> str:
    """The `java` binary (JAVA_HOME first, then PATH), checked to be Java 17 or newer."""
    hint = (
        "Java 17+ is needed to run the local Kafka broker: install a JDK (e.g. "
        "`apt-get install openjdk-17-jre-headless`) and put `java` on PATH or set JAVA_HOME, "
        "or point EXPLORER_KAFKA_BOOTSTRAP at an existing Kafka cluster instead."
    )
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = str(candidate) if candidate and os.access(candidate, os.X_OK) else _require_tool("java", hint)
    major = _java_major(java)
    if major is not None and major < MIN_JAVA:
        raise BrokerError(f"{java} is Java {major}. {hint}")
    return java


def _java_major(java: str) -> int | None:
    """Parses `java -version` ("17.0.15", or "1.8.0_392" for Java 8); None when it can't tell."""
    try:
        out = subprocess.run([java, "-version"], check=False, capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    first, second = int(match.group(1)), int(match.group(2) or 0)
    return second if first == 1 else first


def _require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BrokerError(f"`{name}` was not found on PATH. {hint}")
    return path


def _random_kafka_uuid() -> str:
    """What `kafka-storage.sh random-uuid` prints: 16 random bytes, URL-safe base64 without padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka avoids ids that would read as a command-line flag
            return text


def _port_free(host: str, port: int) -> bool:
    """False if something listens there; other bind failures (a host not on this machine) raise."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as the JVM does: TIME_WAIT left by a broker we just stopped must not count as "in use"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise BrokerError(
                f"the broker cannot listen on {host}:{port} ({exc.strerror}): set "
                "EXPLORER_BROKER_HOST to an address of this machine, e.g. 127.0.0.1"
            ) from exc
    return True


def _is_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:  # our own child: poll() reaps it, so a dead one is not mistaken for a zombie
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return not _is_zombie(pid)


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _cmdline_version(pid: int) -> str | None:
    """The Kafka version a broker process runs, read from its classpath `.../dist/<version>/lib/*`."""
    for arg in _cmdline(pid):
        if match := re.search(r"/dist/([^/]+)/lib/\*$", arg):
            return match.group(1)
    return None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"


def _wait_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


_CONFIG_DUMP_LINE = re.compile(r"^\t[\w.-]+ = ")  # Kafka logs every config value at startup: noise in a tail


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # Maven colors its output even in batch mode


def _tail(text: str, lines: int = 40) -> str:
    plain = _ANSI_ESCAPE.sub("", text)
    kept = [line for line in plain.strip().splitlines() if line.strip() and not _CONFIG_DUMP_LINE.match(line)]
    return "\n".join(kept[-lines:])


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serializes fetch/start across processes (two CLIs, or a CLI and the test suite)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
