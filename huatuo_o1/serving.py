"""Start a server as a subprocess on a free port, wait until it is healthy, stop it by PID.

Used by the tests (stand-in teacher, `transformers serve`) and by evaluation/serve.py. A server
is only ever stopped through the PID we recorded when we started it, never by matching names.
"""

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, timeout_s: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll url until it answers 200; raise if the process exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


def start_server(
    command: list[str],
    health_url: str,
    log_path: str | None = None,
    pid_file: str | None = None,
    timeout_s: float = 60.0,
    env: dict | None = None,
    cwd: str | None = None,
) -> subprocess.Popen:
    """Launch command (a list), wait for health_url, record the PID; return the Popen.

    The server gets its own process group so that stopping it also stops any workers it spawned.
    """
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    if pid_file:
        # The start time lets a later stop tell our server from an unrelated process that
        # got the same PID after ours exited (PIDs are recycled).
        with open(pid_file, "w") as f:
            f.write(f"{process.pid} {process_start_time(process.pid) or ''}".strip() + "\n")
    try:
        wait_until_healthy(health_url, timeout_s, process)
    except BaseException:
        stop_pid(process.pid)
        raise
    finally:
        if log_path:
            log.close()
    return process


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of pid (clock ticks since boot, from /proc), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 2 (the command name) may contain spaces and parentheses: split after its closing ')'.
    fields_after_name = stat.rsplit(")", 1)[1].split()
    return fields_after_name[19]  # field 22 of stat


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists" until reaped; reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def stop_pid(pid: int, grace_s: float = 10.0) -> bool:
    """SIGTERM the process group led by pid, then SIGKILL after grace_s. Returns True if it was running."""
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


def read_pid_file(pid_file: str) -> tuple[int, str | None]:
    """(pid, start time or None) as start_server recorded them."""
    with open(pid_file) as f:
        fields = f.read().split()
    return int(fields[0]), (fields[1] if len(fields) > 1 else None)


def stop_from_pid_file(pid_file: str) -> bool:
    """Stop the server whose PID start_server recorded; remove the file. Returns True if one was running.

    If the recorded PID now belongs to a process that started at another time, the server is
    long gone and the PID was reused: that process is left alone.
    """
    if not os.path.exists(pid_file):
        return False
    pid, recorded_start = read_pid_file(pid_file)
    current_start = process_start_time(pid)
    if recorded_start is not None and current_start is not None and current_start != recorded_start:
        stopped = False
    else:
        stopped = stop_pid(pid)
    os.remove(pid_file)
    return stopped
