"""What each Python process of a GPU-check step used, written when it ends (bench/gpu_check.py reads it).

bench/gpu_check.py puts this folder first on a step's PYTHONPATH and names a folder in GPU_CHECK_PROBE_DIR.
Python imports this file as `sitecustomize` when it starts; it first runs the sitecustomize it hides (the
interpreter's own, if there is one), so a step starts as it would without it. Each process then writes
<GPU_CHECK_PROBE_DIR>/<pid>.json when it ends:
- its peak GPU memory: torch.cuda.max_memory_allocated (and max_memory_reserved) per device, None when the process
  never used CUDA;
- the attention implementation of every transformers model it built (config._attn_implementation, read when the
  model is built).
A process ends through the interpreter's exit (atexit), through os._exit, which a rank of a multi-process launch
calls (huatuo_o1/cli.py), or by SIGTERM (how a server is stopped; uvicorn shuts down and then raises it again): all
three are covered, and each still ends the process as it would have. Without GPU_CHECK_PROBE_DIR nothing happens.
"""

import atexit
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import signal
import site
import sys
import sysconfig

FOLDER = os.environ.get("GPU_CHECK_PROBE_DIR")
attention = {}  # model class name -> attention implementation
written = []


def peak_memory():
    """(allocated, reserved) peak bytes per device and the device name; None for each when CUDA was never used."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is None or not cuda.is_initialized():
        return None, None, None
    devices = range(cuda.device_count())
    return (
        [cuda.max_memory_allocated(d) for d in devices],
        [cuda.max_memory_reserved(d) for d in devices],
        cuda.get_device_name(),
    )


def record():
    if written or not FOLDER:
        return
    written.append(os.getpid())
    try:
        allocated, reserved, device = peak_memory()
        figures = {
            "pid": os.getpid(),
            "argv": sys.argv[:3],
            "peak_allocated_bytes": allocated,
            "peak_reserved_bytes": reserved,
            "device": device,
            "attention": attention,
        }
        os.makedirs(FOLDER, exist_ok=True)
        path = os.path.join(FOLDER, f"{os.getpid()}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(figures, f)
        os.replace(path + ".tmp", path)
    except Exception as error:  # a probe must never change how the step ends
        print(f"gpu_check probe: nothing recorded ({type(error).__name__}: {error})", file=sys.stderr)


def watch_models(pretrained_model):
    """Note each model's attention implementation at the end of its construction (post_init)."""
    built = pretrained_model.post_init

    def post_init(self, *args, **kwargs):
        result = built(self, *args, **kwargs)
        config = getattr(self, "config", None)
        attention[type(self).__name__] = getattr(config, "_attn_implementation", None)
        return result

    pretrained_model.post_init = post_init


class WatchTransformers(importlib.abc.MetaPathFinder):
    """Finds transformers.modeling_utils as Python would, and hooks PreTrainedModel once the module is loaded."""

    def find_spec(self, name, path, target=None):
        if name != "transformers.modeling_utils":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                try:
                    watch_models(module.PreTrainedModel)
                except AttributeError:
                    pass

            spec.loader.exec_module = exec_module
        return spec


def run_the_hidden_sitecustomize():
    """Python imports only the first sitecustomize it finds, and this one comes first on a step's path: run the one
    of the interpreter's own folders, if any, as Python would have."""
    here = os.path.dirname(os.path.abspath(__file__))
    places = [sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")]
    places = [p for p in dict.fromkeys(places + site.getsitepackages()) if p and os.path.abspath(p) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", places)
    if spec is None or spec.loader is None:
        return
    try:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    except Exception as error:
        print(f"gpu_check probe: {spec.origin} failed ({type(error).__name__}: {error})", file=sys.stderr)


run_the_hidden_sitecustomize()
if FOLDER:
    sys.meta_path.insert(0, WatchTransformers())
    atexit.register(record)
    leave_now = os._exit

    def exit_recorded(status):
        record()
        leave_now(status)

    os._exit = exit_recorded

    def terminate_recorded(signum, frame):
        record()
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, terminate_recorded)
