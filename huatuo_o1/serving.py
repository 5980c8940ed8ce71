"""Servers started and stopped by PID: start one only on a port nobody holds, call it ready only when the
process we started answers, stop only a process we can prove we started.

Used by evaluation/serve.py, serve_verifier.py and the tests (stand-in teacher, `transformers serve`). A server is
never stopped by matching names. The proof that a PID is still our server is three facts recorded when we
started it (the PID, the kernel's start time of that process, its command line), all checked again
before a signal is sent; Linux's /proc supplies them, and tells which process owns a listening socket.
"""

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from huatuo_o1.records import InputError, read_json


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """Raise InputError when host:port cannot be listened on (another server holds it, or no such address)."""
    if not 1 <= port <= 65535:
        raise InputError(f"--port {port} is not a TCP port: use 1 to 65535")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise InputError(f"--host {host!r} is not an address of this machine ({e})") from None
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR, as servers set it: a closed socket lingering in TIME_WAIT is no holder, a listener is.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise InputError(f"cannot listen on {host}:{port} ({e.strerror}): check --host") from None
            holders = listening_pids(port)
            by = f" by PID {', '.join(map(str, sorted(holders)))}" if holders else ""
            raise InputError(
                f"port {port} on {host} is already in use{by}: another server runs there; stop it, or pass "
                "another --port (evaluation/run_eval.sh picks a free one)"
            ) from None


def _listening_inodes(port: int) -> set[str] | None:
    """Socket inodes listening on TCP port (any address), or None where /proc/net cannot tell."""
    inodes, readable = set(), False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(inode)
    return inodes if readable else None


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (field 3 onwards), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 2 (the command name) may contain spaces and parentheses: split after its closing ')'.
    return stat.rsplit(")", 1)[1].split()


def _pids(session: int | None = None) -> list[int]:
    """Every PID /proc lists, or those of one session (a server and the workers it spawned)."""
    pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    if session is None:
        return pids
    return [pid for pid in pids if (fields := _stat_fields(pid)) is not None and int(fields[3]) == session]


def listening_pids(port: int, session: int | None = None) -> set[int] | None:
    """PIDs (of this user's processes, or of one session) holding a socket that listens on port; None
    where /proc cannot tell."""
    inodes = _listening_inodes(port)
    if inodes is None:
        return None
    sockets = {f"socket:[{inode}]" for inode in inodes}
    found = set()
    for pid in _pids(session):
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:  # another user's process, or gone
            continue
        if links & sockets:
            found.add(pid)
    return found


def wait_until_healthy(url: str, timeout_s: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll url until it answers 200; raise if the process exits first or time runs out.

    With a process, the answer counts only when that process (or one of its session) holds the port:
    when another server already sat on it, ours fails to bind and exits, but the other one answers.
    """
    port = urllib.parse.urlsplit(url).port or 80
    deadline = time.monotonic() + timeout_s
    foreign = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            holders = listening_pids(port)
            foreign = ", ".join(map(str, sorted(holders))) if holders else foreign
            held = f"; port {port} is held by another process (PID {foreign})" if foreign else ""
            raise RuntimeError(f"server exited with code {process.returncode} before {url} answered{held}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    if process is None:
                        return
                    ours = listening_pids(port, session=process.pid)
                    if ours is None and process.poll() is None:
                        return  # no /proc: our process is alive and the port was free when it started
                    if ours:
                        return
                    foreign = ", ".join(map(str, sorted(listening_pids(port) or []))) or "unknown"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.2)
    held = f"; port {port} answers, but from another process (PID {foreign})" if foreign else ""
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s{held}")


@dataclass
class ServerRecord:
    """What a PID file holds: enough to prove, later, that a PID is still the process we started."""

    pid: int
    start_time: str  # the kernel's start time of the process (clock ticks since boot)
    command: list[str]  # its command line as the kernel reports it


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of pid (clock ticks since boot, from /proc), or None where unknown."""
    fields = _stat_fields(pid)
    return fields[19] if fields is not None else None  # field 22 of stat


def process_command(pid: int) -> list[str] | None:
    """The command line of pid as the kernel reports it, or None where unknown."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


def write_pid_file(pid_file: str, pid: int) -> None:
    """Record pid with its start time and command line (written whole, then renamed into place)."""
    record = {"pid": pid, "start_time": process_start_time(pid), "command": process_command(pid)}
    folder = os.path.dirname(os.path.abspath(pid_file))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pid")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record) + "\n")
    os.replace(tmp, pid_file)


def read_pid_file(pid_file: str) -> ServerRecord:
    """The record start_server wrote; InputError when the file does not hold all three facts."""
    why = ""
    try:
        record = ServerRecord(**read_json(pid_file))
        valid = (
            isinstance(record.pid, int)
            and record.pid > 1
            and isinstance(record.start_time, str)
            and record.start_time.isdigit()
            and isinstance(record.command, list)
            and record.command
            and all(isinstance(part, str) for part in record.command)
        )
    except InputError as error:
        valid, why = False, f" ({error})"
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise InputError(
            f"{pid_file} does not prove which process we started{why} (it must hold the PID, its start time and its "
            "command line, as evaluation/serve.py writes them): nothing stopped. Check the process yourself "
            "(`ps -fp PID`), stop it with `kill PID` if it is your server, and delete the file"
        )
    return record


@contextlib.contextmanager
def sigterm_raises():
    """Within: SIGTERM raises SystemExit(143), so that cleanup runs as on Ctrl-C (main thread only; Python's
    default is to die at once). The previous handler is back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_server(
    command: list[str],
    health_url: str,
    log_path: str | None = None,
    pid_file: str | None = None,
    timeout_s: float = 60.0,
    env: dict | None = None,
    cwd: str | None = None,
) -> subprocess.Popen:
    """Launch command (a list), wait until it answers health_url itself, record its PID; return the Popen.

    The server gets its own session (and process group) so that stopping it also stops any workers it
    spawned, and so that the socket that answers can be traced to it. The PID file is written once the
    server answers: its command line is then the server's, not the one of the forked parent it briefly
    had before exec (until then start_server itself stops it on any failure).
    """
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    try:
        with sigterm_raises():  # a caller killed while it waits stops the server too (it has its own session)
            wait_until_healthy(health_url, timeout_s, process)
        if pid_file:
            write_pid_file(pid_file, process.pid)
    except BaseException:
        stop_pid(process.pid)
        raise
    finally:
        if log_path:
            log.close()
    return process


def _alive(pid):
    """True while pid runs; a zombie (exited, not yet reaped) has stopped."""
    if os.path.isdir("/proc"):
        fields = _stat_fields(pid)
        if fields is not None and fields[0] == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
            except ChildProcessError:
                pass
            return False
        return fields is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def stop_pid(pid: int, grace_s: float = 10.0) -> bool:
    """SIGTERM the process group led by pid, then SIGKILL after grace_s. Returns True if it was running."""
    if pid <= 1:
        raise ValueError(f"refusing to signal PID {pid}")  # 0 and -1 would signal whole groups of processes
    if not _alive(pid):
        return False
    try:
        target, kill = os.getpgid(pid), os.killpg
        if target != pid:  # not a group leader: signal only that process
            target, kill = pid, os.kill
    except ProcessLookupError:
        return False
    kill(target, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    try:
        kill(target, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while _alive(pid):
        time.sleep(0.05)
    return True


def stop_from_pid_file(pid_file: str) -> str:
    """Stop the server a PID file proves we started; remove the file. Returns "stopped", or "gone" when that
    process has exited (its PID free, or now another process's: left alone).

    Raises InputError, signalling nothing and keeping the file, when the file lacks the proof, or when the
    process started at the recorded time but now shows another command line.
    """
    record = read_pid_file(pid_file)
    if process_start_time(record.pid) != record.start_time or not _alive(record.pid):
        outcome = "gone"
    elif process_command(record.pid) != record.command:
        raise InputError(
            f"{pid_file}: PID {record.pid} started at the recorded time but its command line is now "
            f"{' '.join(process_command(record.pid) or [])!r}, not the recorded {' '.join(record.command)!r}: "
            f"nothing stopped (if it is your server, stop it with `kill {record.pid}` and delete the file)"
        )
    else:
        outcome = "stopped" if stop_pid(record.pid) else "gone"
    os.remove(pid_file)
    return outcome


def recorded_server_running(pid_file: str) -> ServerRecord | None:
    """The record of a PID file whose process still runs (the same PID and start time), None when it has
    exited; InputError when the file lacks the proof."""
    record = read_pid_file(pid_file)
    return record if process_start_time(record.pid) == record.start_time else None


def start_recorded_server(
    command: list[str],
    health_url: str,
    pid_file: str,
    log_file: str,
    timeout_s: float,
    env: dict | None = None,
    name: str = "the",
) -> subprocess.Popen:
    """start_server, its PID recorded in pid_file and its output in log_file (their folders made); a server that does
    not come up stops the caller (SystemExit) with the reason and the last lines of its log."""
    for path in (pid_file, log_file):
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the folder of {path}: {e.strerror}") from None
    try:
        return start_server(command, health_url, log_path=log_file, pid_file=pid_file, timeout_s=timeout_s, env=env)
    except BaseException as e:
        if os.path.exists(pid_file):
            os.remove(pid_file)  # start_server stopped the process it names
        if not isinstance(e, (RuntimeError, TimeoutError)):
            raise
        with open(log_file, errors="replace") as f:
            tail = "".join(f.readlines()[-15:])
        sys.exit(f"error: the {name} server did not come up: {e}\nlast lines of {log_file}:\n{tail}")


def refuse_recorded_server(pid_file: str, script: str, stop_command: str) -> None:
    """Before a start: never overwrite a PID file that records a running server, or one we cannot read (InputError)."""
    if not os.path.exists(pid_file):
        return
    try:
        running = recorded_server_running(pid_file)
    except InputError:
        raise InputError(
            f"{pid_file} exists but does not record a server as {script} does (PID, start time, command line): not "
            "overwritten. Check it and delete it, or pass another --pid_file"
        ) from None
    if running:
        raise InputError(
            f"{pid_file} records a running server (PID {running.pid}); stop it first ({stop_command}) or pass "
            "another --pid_file"
        )


def stop_recorded_server(pid_file: str, script: str) -> str:
    """--stop: stop the server pid_file records, only if it provably is the one started (stop_from_pid_file); returns
    the line to print."""
    if not os.path.exists(pid_file):
        return (
            f"No server recorded in {pid_file}: nothing stopped. (A server started by hand is stopped with "
            f"`kill PID`; start it with {script} to have it recorded.)"
        )
    pid = read_pid_file(pid_file).pid  # refuses a file without the proof
    if stop_from_pid_file(pid_file) == "stopped":
        return f"stopped server PID {pid}"
    return f"server PID {pid} had already exited (nothing signalled); removed {pid_file}"
