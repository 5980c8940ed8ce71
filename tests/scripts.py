"""Running a script of the repository as its user would: in a fresh process, or (faster) in this one.

Tests never import a script: a script is run whole, with its command line, and judged by its exit
status, its output and the files it writes.
"""

import contextlib
import io
import os
import runpy
import shlex
import subprocess
import sys
import tempfile
import time
import types

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script_path(name):
    return name if os.path.isabs(name) else os.path.join(REPO_ROOT, name)


def run_command(command, cwd=REPO_ROOT, env=None, timeout=900, check=False):
    """Run a command line as a process (a script, `bash evaluation/run_eval.sh ...`, `accelerate launch ...`);
    returns returncode, stdout, stderr. env: variables set over this process's (None removes one). check: a
    non-zero exit fails the test, showing the ends of both streams."""
    command = [str(a) for a in command]
    child_env = {**os.environ, **{k: v for k, v in (env or {}).items() if v is not None}}
    for key in [k for k, v in (env or {}).items() if v is None]:
        child_env.pop(key, None)
    done = subprocess.run(command, cwd=cwd, env=child_env, capture_output=True, text=True, timeout=timeout)
    result = types.SimpleNamespace(returncode=done.returncode, stdout=done.stdout, stderr=done.stderr)
    return checked(result, shlex.join(command)) if check else result


def run_script(name, argv, cwd=REPO_ROOT, env=None, subprocess_run=False, timeout=900, check=False):
    """Run a script (path relative to the repository) with argv; returns returncode, stdout, stderr.

    In-process (the default) saves the imports of a fresh interpreter: the script runs as __main__
    with this sys.argv, in cwd, with these environment variables; SystemExit becomes the return code.
    check: a non-zero exit fails the test, showing the ends of both streams.
    """
    path = script_path(name)
    argv = [str(a) for a in argv]
    if subprocess_run:
        return run_command([sys.executable, path, *argv], cwd=cwd, env=env, timeout=timeout, check=check)
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    saved_env = {name: os.environ.get(name) for name in (env or {})}
    out, err = io.StringIO(), io.StringIO()
    returncode = 0
    try:
        sys.argv = [path, *argv]
        for key, value in (env or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(path, run_name="__main__")
            except SystemExit as stop:
                if stop.code not in (None, 0):
                    returncode = stop.code if isinstance(stop.code, int) else 1
                    if not isinstance(stop.code, int):
                        print(stop.code, file=sys.stderr)
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    result = types.SimpleNamespace(returncode=returncode, stdout=out.getvalue(), stderr=err.getvalue())
    return checked(result, name) if check else result


def run_ok(name, argv, **kwargs):
    """run_script, failing the test unless the script exits 0."""
    return run_script(name, argv, check=True, **kwargs)


def checked(result, what):
    """The result of a run that must have exited 0 (else the test fails with the ends of its output)."""
    assert result.returncode == 0, (
        f"{what} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return result


def reset_accelerate():
    """Forget accelerate's process-wide state, so the next in-process run builds its own."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def record_calls(monkeypatch, owner, name):
    """Wrap owner.name so that every call's arguments are recorded (the real one still runs); returns the list."""
    calls = []
    real = getattr(owner, name)

    def recorded(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    is_static = isinstance(vars(owner).get(name), staticmethod) if isinstance(owner, type) else False
    monkeypatch.setattr(owner, name, staticmethod(recorded) if is_static else recorded)
    return calls


def accelerate_launch(script, argv, port, num_processes=2, num_machines=1, machine_rank=0):
    """The command line of one machine's `accelerate launch` of a script, as the README and docs/scaling.md type it,
    with the CPU config (DeepSpeed ZeRO-3 over gloo): machine 0 listens on 127.0.0.1:port, the others join it there."""
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    return [
        accelerate, "launch", "--config_file", os.path.join(REPO_ROOT, "configs", "deepspeed_zero3_cpu.yaml"),
        "--num_processes", str(num_processes), "--num_machines", str(num_machines), "--machine_rank",
        str(machine_rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
        "--deepspeed_multinode_launcher", "standard", script, *map(str, argv),
    ]  # fmt: skip


def _running(process):
    """True while a psutil.Process (the same PID and start time) runs; a zombie has stopped."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def run_launches(commands, timeout=600):
    """Run the launches of one distributed run at once (one per machine, each in its own session, output in
    files) as users start them on their nodes; returns (results, left): one (returncode, stdout, stderr, stopped)
    per launch (stopped: "time ran out", "another machine failed" or ""; a launcher stopped by SIGTERM may still
    exit 0), and the processes of the run still alive after it (none, unless stopping failed).

    When a launch fails or time runs out, the others are stopped by PID: a rank whose peer died would wait for it
    in a collective for half an hour. First each launcher's process group (accelerate's agent passes SIGTERM on to
    its workers and waits for them), then any worker that outlived it (workers lead sessions of their own).
    """
    import psutil

    from huatuo_o1.serving import stop_pid

    env = dict(os.environ, OMP_NUM_THREADS="1")  # the figures the tests compare do not move with thread counts
    files = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in commands]
    launches, seen = [], {}  # seen: every process of the run, by PID (psutil keeps its start time)
    why_stopped = "time ran out"
    try:
        for command, (out, err) in zip(commands, files):
            launches.append(
                subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for launch in launches:
                with contextlib.suppress(psutil.Error):
                    for child in psutil.Process(launch.pid).children(recursive=True):
                        seen.setdefault(child.pid, child)
            codes = [launch.poll() for launch in launches]
            if None not in codes or any(code not in (None, 0) for code in codes):
                why_stopped = "another machine failed"
                break
            time.sleep(0.5)
    finally:
        stopped = [launch.poll() is None for launch in launches]
        for launch in launches:
            if launch.poll() is None:
                stop_pid(launch.pid, grace_s=45)  # the agent gives its workers 30 s to leave
        for process in seen.values():
            if _running(process):
                stop_pid(process.pid)
        for launch in launches:
            launch.wait()
    results = []
    for launch, (out, err), was_stopped in zip(launches, files, stopped):
        out.seek(0), err.seek(0)
        results.append(
            types.SimpleNamespace(
                returncode=launch.returncode,
                stdout=out.read(),
                stderr=err.read(),
                stopped=why_stopped if was_stopped else "",
            )
        )
        out.close(), err.close()
    return results, [pid for pid, process in seen.items() if _running(process)]


def launch_ok(commands, timeout=600):
    """run_launches, asserting that every launch exited 0 and that no process of the run is left; the results."""
    results, left = run_launches(commands, timeout)
    failed = [
        f"machine {machine} {f'stopped ({result.stopped})' if result.stopped else f'exited {result.returncode}'}:\n"
        f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        for machine, result in enumerate(results)
        if result.returncode != 0 or result.stopped
    ]
    assert not failed, "\n\n".join(failed)
    assert not left, f"processes left running after the launch: {left}"
    return results


def bench_module(name):
    """A bench script (bench/<name>.py) as a module, for a test of one of its functions: benches are scripts too,
    but a bench's helpers have no other home."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(REPO_ROOT, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
