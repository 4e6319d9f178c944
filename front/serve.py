"""Serve Super Size Me behind its buffering front (``make serve``, the Docker image's command).

nginx listens on the public address (``SSM_BIND``) and gunicorn on a unix socket in a private
temporary directory behind it; front/nginx.conf says why. This process writes nginx's
configuration from the service's settings, starts gunicorn and nginx, passes stop signals on
to both, and when either exits on its own stops the other and exits non-zero, so that a
container (where this is PID 1) or a terminal sees the service as one process.

    python -m front.serve
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from supersizeme.service import config as settings
from supersizeme.service.worker import header_timeout_seconds

TEMPLATE = Path(__file__).resolve().parent / "nginx.conf"
# nginx reads -e (where to log before its configuration is read) from 1.19.5 on; older ones
# first try their built-in log file, which only root may open.
EARLY_LOG_SINCE = (1, 19, 5)
PR_SET_PDEATHSIG = 1
# On SIGTERM nginx relays the answers gunicorn finishes within its graceful timeout; this
# much longer it lets them reach slow clients before it closes what is left.
SHUTDOWN_MARGIN_SECONDS = 5
GUNICORN = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"]
# Request threads gunicorn keeps beyond one per upload slot: a body passes through the front
# as it arrives and holds its thread meanwhile, and health checks, scrapes and the demo page
# must still find one free.
SPARE_THREADS = 4


@dataclass(frozen=True)
class FrontSettings:
    listen: str
    header_timeout: float
    stall_timeout: float
    max_uploads: int
    max_uploads_per_client: int
    max_body_bytes: int
    retry_after: int
    # gunicorn's worker timeout and graceful timeout, from gunicorn.conf.py.
    upstream_timeout: float
    graceful_timeout: float
    # gunicorn's request threads per worker: its own setting, raised to an upload slot each
    # and SPARE_THREADS more.
    threads: int
    temp_dir: str | None

    @classmethod
    def from_environment(cls) -> FrontSettings:
        service = settings.from_environment()
        server = runpy.run_path(str(settings.REPO_ROOT / "gunicorn.conf.py"))
        max_uploads = settings.env("SSM_FRONT_MAX_UPLOADS", 32, int)
        return cls(
            listen=settings.env("SSM_BIND", "0.0.0.0:8000"),
            header_timeout=header_timeout_seconds(),
            stall_timeout=settings.env("SSM_STALL_TIMEOUT_SECONDS", 15.0, float),
            max_uploads=max_uploads,
            # A quarter of the slots: a single address trickling bodies leaves the rest to
            # everyone else.
            max_uploads_per_client=settings.env(
                "SSM_FRONT_MAX_UPLOADS_PER_CLIENT", max(1, max_uploads // 4), int
            ),
            max_body_bytes=service["MAX_BODY_BYTES"],
            retry_after=service["RETRY_AFTER_SECONDS"],
            upstream_timeout=float(server["timeout"]),
            graceful_timeout=float(server["graceful_timeout"]),
            threads=max(int(server["threads"]), max_uploads + SPARE_THREADS),
            temp_dir=settings.env("SSM_FRONT_TEMP_DIR", None),
        )


def milliseconds(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


# sockaddr_un's sun_path holds 108 bytes with the terminating NUL (Linux unix(7)).
UNIX_PATH_MAX = 107


def nginx_config(
    front: FrontSettings, workdir: Path, socket_path: Path, account: Account | None = None
) -> str:
    """front/nginx.conf with every ``{{name}}`` filled in."""
    limit = front.max_body_bytes
    values = {
        "workdir": str(workdir),
        "socket": str(socket_path),
        "listen": front.listen,
        "user_directive": user_directive(account),
        "header_timeout": milliseconds(front.header_timeout),
        "stall_timeout": milliseconds(front.stall_timeout),
        "upstream_timeout": milliseconds(front.upstream_timeout),
        "shutdown_timeout": milliseconds(front.graceful_timeout + SHUTDOWN_MARGIN_SECONDS),
        "max_request_bytes": str(limit + settings.MULTIPART_OVERHEAD_BYTES),
        "max_uploads": str(front.max_uploads),
        "max_uploads_per_client": str(front.max_uploads_per_client),
        "retry_after": str(front.retry_after),
        # The app's own sentence for its 413 (supersizeme/service/api.py).
        "payload_too_large": (
            f"The upload is larger than the limit of {limit:,} bytes ({limit / 2**20:g} MiB)."
        ),
    }
    return re.sub(r"\{\{(\w+)\}\}", lambda match: values[match.group(1)], TEMPLATE.read_text())


@dataclass(frozen=True)
class Account:
    """The unprivileged user gunicorn and nginx's workers run as when started as root."""

    name: str
    group: str
    uid: int
    gid: int

    @classmethod
    def for_service(cls) -> Account | None:
        """``SSM_USER`` (nobody unless set) when started as root; None when not root, or
        when ``SSM_USER`` names root itself (a choice an operator makes on purpose, in a
        user namespace say)."""
        if os.geteuid() != 0:
            return None
        name = settings.env("SSM_USER", "nobody")
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise SystemExit(f"front: SSM_USER={name}: no such user") from None
        if entry.pw_uid == 0:
            return None
        return cls(name, grp.getgrgid(entry.pw_gid).gr_name, entry.pw_uid, entry.pw_gid)

    def become(self) -> None:
        os.setgroups([])
        os.setgid(self.gid)
        os.setuid(self.uid)

    def cannot_read(self, paths: list[Path]) -> list[Path]:
        """Those of ``paths`` this account cannot read, tried in a child that becomes it."""
        reader, writer = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(reader)
            try:
                self.become()
                refused = [str(path) for path in paths if not os.access(path, os.R_OK)]
                os.write(writer, "\0".join(refused).encode())
            finally:
                os._exit(0)
        os.close(writer)
        with os.fdopen(reader, "rb") as answer:
            said = answer.read().decode()
        os.waitpid(child, 0)
        return [Path(path) for path in said.split("\0") if path]


def served_paths() -> list[Path]:
    """What the service's user must be able to read: the interpreter, the app, the models."""
    service = settings.from_environment()
    models = [Path(folder) for folder in settings.model_dirs(service).values()]
    return [Path(sys.executable), settings.REPO_ROOT / "app.py", *models]


def user_directive(account: Account | None) -> str:
    """Whom nginx's workers run as: ``account``, else the user who started it.

    Started as root, nginx would otherwise switch its workers to nobody whatever SSM_USER
    says. Unprivileged, nginx cannot switch and needs no line.
    """
    if account is not None:
        return f"user {account.name} {account.group};"
    if os.geteuid() != 0:
        return ""
    user = pwd.getpwuid(os.geteuid())
    return f"user {user.pw_name} {grp.getgrgid(os.getegid()).gr_name};"


def account_options(account: Account | None) -> dict[str, Any]:
    """Popen's options that start a child as ``account`` (all of it: gunicorn's master too,
    not only its workers, as gunicorn's own --user would)."""
    if account is None:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": []}


def find_nginx() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise SystemExit(
            "front: nginx is not installed. `make serve` installs it when run as root on "
            "Debian; elsewhere install nginx (Debian: apt-get install nginx) and start again."
        )
    return found


def nginx_version(nginx: str) -> tuple[int, ...]:
    # `nginx -v` writes e.g. "nginx version: nginx/1.22.1" to standard error.
    said = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=True).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", said)
    return tuple(int(part) for part in match.groups()) if match else (0,)


def relay(source: BinaryIO | None, target: BinaryIO) -> None:
    """Copy lines as they come until the writers are gone; read on if ours cannot be written
    to, so that nginx never blocks on a full pipe."""
    for line in source or ():
        with suppress(OSError):
            target.write(line)
            target.flush()


def die_with_parent() -> None:
    """Linux: the child gets SIGTERM if this process dies without stopping it (SIGKILL)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """gunicorn and nginx as one service: started together, stopped together."""

    def __init__(self) -> None:
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False

    def start(self, name: str, command: list[str], **options: Any) -> subprocess.Popen | None:
        if self.stopping:
            return None  # asked to stop before everything had started
        self.children[name] = subprocess.Popen(
            command, cwd=settings.REPO_ROOT, preexec_fn=die_with_parent, **options
        )
        return self.children[name]

    def wait_for(self, path: Path, name: str, seconds: float) -> None:
        """Until ``path`` exists, or ``name`` has exited, a stop is asked or time is up."""
        child = self.children.get(name)
        deadline = time.monotonic() + seconds
        while child and not path.exists() and not self.stopping and time.monotonic() < deadline:
            # WNOWAIT: look without reaping, which is wait()'s job.
            if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                return
            time.sleep(0.05)

    def stop(self, graceful: bool) -> None:
        """Ask both to stop. Gracefully, requests in flight finish: gunicorn (SIGTERM) answers
        them and nginx (SIGQUIT) stops accepting but relays those answers first; otherwise
        both stop at once (gunicorn SIGINT, nginx SIGTERM), as for Ctrl-C."""
        self.stopping = True
        signals = {
            "gunicorn": signal.SIGTERM if graceful else signal.SIGINT,
            "nginx": signal.SIGQUIT if graceful else signal.SIGTERM,
        }
        for name, child in self.children.items():
            # os.kill, not Popen.send_signal: that would reap the child behind wait()'s back.
            if child.returncode is None:
                os.kill(child.pid, signals[name])

    def on_signal(self, signum: int, _frame: Any) -> None:
        self.stop(graceful=signum == signal.SIGTERM)

    def wait(self) -> int:
        """Wait for both: 0 once both stopped as asked, else non-zero (the exit status of
        the first that exited unasked, or of gunicorn)."""
        running = {child.pid: name for name, child in self.children.items()}
        unasked: int | None = None
        while running:
            try:
                pid, wait_status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            name = running.pop(pid, None)
            if name is None:
                continue  # an orphan handed to us as a container's PID 1
            child = self.children[name]
            child.returncode = os.waitstatus_to_exitcode(wait_status)
            if not self.stopping:
                print(f"front: {name} exited ({child.returncode}); stopping", file=sys.stderr)
                unasked = child.returncode
                self.stop(graceful=True)
        if unasked is None:
            gunicorn = self.children.get("gunicorn")
            code = gunicorn.returncode if gunicorn and gunicorn.returncode else 0
            if code == 0:
                return 0
        else:
            code = unasked
        # Killed by a signal (negative), or exited 0 without being asked: still a failure.
        return code if code > 0 else 1


def serve() -> int:
    nginx = find_nginx()
    front = FrontSettings.from_environment()
    account = Account.for_service()
    if account is not None and (unreadable := account.cannot_read(served_paths())):
        print(
            f"front: started as root, the service runs as {account.name}, who cannot "
            f"read {', '.join(map(str, unreadable))}; make it readable, or set SSM_USER "
            "to an account that can",
            file=sys.stderr,
        )
        return 2
    supervisor = Supervisor()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, supervisor.on_signal)
    try:
        scratch = tempfile.TemporaryDirectory(
            prefix="supersizeme-front-", dir=front.temp_dir, ignore_cleanup_errors=True
        )
    except OSError as exc:
        # A read-only root file system without a writable /tmp (docker run --read-only).
        print(
            f"front: no writable temporary folder ({exc}); mount one at /tmp "
            "(docker run --tmpfs /tmp) or set SSM_FRONT_TEMP_DIR to a writable folder",
            file=sys.stderr,
        )
        return 2
    with scratch as work:
        workdir = Path(work)
        if account is not None:
            # nginx's workers write their buffers here, gunicorn makes its socket here.
            os.chown(workdir, account.uid, account.gid)
        socket_path = workdir / "gunicorn.sock"
        if len(os.fsencode(socket_path)) > UNIX_PATH_MAX:
            print(
                f"front: {socket_path} is longer than a unix socket path may be "
                f"({UNIX_PATH_MAX} bytes); set SSM_FRONT_TEMP_DIR to a shorter folder",
                file=sys.stderr,
            )
            return 2
        config = workdir / "nginx.conf"
        config.write_text(nginx_config(front, workdir, socket_path, account))
        command = [nginx, "-p", str(workdir), "-c", str(config)]
        if nginx_version(nginx) >= EARLY_LOG_SINCE:
            command[1:1] = ["-e", "stderr"]
        # A configuration nginx refuses stops everything before a model is loaded.
        if subprocess.run([*command, "-t", "-q"], stdout=subprocess.DEVNULL).returncode:
            print(f"front: nginx refused {config} (see above)", file=sys.stderr)
            return 2
        supervisor.start(
            "gunicorn",
            [*GUNICORN, "--threads", str(front.threads), "app:app"],
            env={**os.environ, "SSM_BIND": f"unix:{socket_path}"},
            **account_options(account),
        )
        # gunicorn listens within a second or two, before its workers load the model; nginx
        # starts then, so that early requests queue at gunicorn's socket instead of meeting
        # a missing one (502).
        supervisor.wait_for(socket_path, "gunicorn", 60)
        # nginx opens its access log, /dev/stdout, anew. Unprivileged, it may open a pipe
        # of its own user's but not one a container runtime or a shell gave this process,
        # so its lines come through a pipe of ours (started after the last fork: no thread
        # may run while preexec_fn does).
        proxy = supervisor.start("nginx", command, stdout=subprocess.PIPE)
        relaying = threading.Thread(
            target=relay, args=(proxy.stdout if proxy else None, sys.stdout.buffer), daemon=True
        )
        relaying.start()
        print(
            f"front: nginx on {front.listen}, gunicorn on unix:{socket_path}", file=sys.stderr
        )
        status = supervisor.wait()
        relaying.join(5)  # nginx has exited: what it wrote last is still in the pipe
        return status


if __name__ == "__main__":
    sys.exit(serve())
