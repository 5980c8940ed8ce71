"""Running a script of the repository as its user would: in a fresh process, or (faster) in this one.

Tests never import a script: a script is run whole, with its command line, and judged by its exit
status, its output and the files it writes.
"""

import contextlib
import io
import os
import runpy
import subprocess
import sys
import types

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script_path(name):
    return name if os.path.isabs(name) else os.path.join(REPO_ROOT, name)


def run_script(name, argv, cwd=REPO_ROOT, env=None, subprocess_run=False, timeout=900):
    """Run a script (path relative to the repository) with argv; returns returncode, stdout, stderr.

    In-process (the default) saves the imports of a fresh interpreter: the script runs as __main__
    with this sys.argv, in cwd, with these environment variables; SystemExit becomes the return code.
    """
    path = script_path(name)
    argv = [str(a) for a in argv]
    if subprocess_run:
        child_env = {**os.environ, **{k: v for k, v in (env or {}).items() if v is not None}}
        for key in [k for k, v in (env or {}).items() if v is None]:
            child_env.pop(key, None)
        done = subprocess.run(
            [sys.executable, path, *argv], cwd=cwd, env=child_env, capture_output=True, text=True, timeout=timeout
        )
        return types.SimpleNamespace(returncode=done.returncode, stdout=done.stdout, stderr=done.stderr)
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
    return types.SimpleNamespace(returncode=returncode, stdout=out.getvalue(), stderr=err.getvalue())


def run_ok(name, argv, **kwargs):
    result = run_script(name, argv, **kwargs)
    assert result.returncode == 0, (
        f"{name} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
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
