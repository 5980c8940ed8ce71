"""tools/check_wheels.py: what is carried to the GPU machine is checked here, so that a missing or clashing
dependency is found before the trip (wheels made up in the test, with only their metadata)."""

import os
import subprocess
import sys
import tarfile
import zipfile

from tests.scripts import REPO_ROOT


def make_wheel(folder, name, version, requires=(), tag="py3-none-any", requires_python=None):
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    metadata += [f"Requires-Python: {requires_python}"] if requires_python else []
    metadata += [f"Requires-Dist: {line}" for line in requires]
    path = os.path.join(folder, f"{name.replace('-', '_')}-{version}-{tag}.whl")
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", "\n".join(metadata) + "\n")
    return path


def make_source_archive(folder, name, version, requires=()):
    info = os.path.join(folder, "PKG-INFO")
    with open(info, "w") as f:
        f.write("\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
                          + [f"Requires-Dist: {line}" for line in requires]) + "\n")  # fmt: skip
    path = os.path.join(folder, f"{name}-{version}.tar.gz")
    with tarfile.open(path, "w:gz") as archive:
        archive.add(info, arcname=f"{name}-{version}/PKG-INFO")
    os.remove(info)
    return path


def check(folder, machine):
    machine_file = os.path.join(os.path.dirname(folder), "machine.txt")
    with open(machine_file, "w") as f:
        f.write("\n".join(machine) + "\n")
    command = [sys.executable, "tools/check_wheels.py", folder, "--machine_packages", machine_file]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_a_complete_set_passes_and_unknown_machine_versions_are_listed_to_confirm(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    make_wheel(folder, "trl", "1.16.0", ["datasets>=4.7", "accelerate>=1.10.1", "pandas>=2.1", "rich; extra == 'x'"])
    make_wheel(folder, "datasets", "5.2.0", ["dill<0.4.2", "colorama; sys_platform == 'win32'",
                                             "tomli; python_version < '3.11'"])  # fmt: skip
    make_wheel(folder, "dill", "0.4.1")
    make_wheel(folder, "pydantic-core", "2.50.5", tag="cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64")
    make_source_archive(str(folder), "deepspeed", "0.19.8", ["torch>=2.0", "hjson"])
    make_wheel(folder, "hjson", "3.1.0")
    done = check(str(folder), ["accelerate==1.15.0", "pandas", "torch==2.11.0"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 packages carried" in done.stdout and "requirements: all met" in done.stdout
    # extras, other platforms and older Pythons are not needed; a version the machine list does not know is listed
    assert "to confirm there: trl 1.16.0 needs pandas>=2.1" in done.stdout
    assert "rich" not in done.stdout and "colorama" not in done.stdout and "tomli" not in done.stdout


def test_missing_clashing_doubled_and_foreign_packages_are_named(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    make_wheel(folder, "trl", "1.16.0", ["datasets>=4.7", "accelerate>=2.0"])
    make_wheel(folder, "openai", "3.54.0", ["jiter<1"])
    make_wheel(folder, "openai", "3.53.0")
    make_wheel(folder, "jiter", "1.0.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    make_wheel(folder, "starlette", "1.10.0", requires_python=">=3.13")
    done = check(str(folder), ["accelerate==1.15.0"])
    assert done.returncode == 1
    problems = [line for line in done.stderr.splitlines() if line.startswith("problem: ")]
    assert sorted(problems) == sorted(
        [
            "problem: trl 1.16.0 needs datasets>=4.7: neither carried nor on the machine; add it to "
            "tools/gpu_wheels.sh",
            "problem: trl 1.16.0 needs accelerate>=2.0: the machine has 1.15.0; carry one that fits",
            "problem: openai: two versions carried (3.53.0 and 3.54.0); pip refuses both",
            "problem: openai 3.54.0 needs jiter<1: carried 1.0.0",
            "problem: jiter-1.0.0-cp311-cp311-manylinux_2_17_x86_64.whl: not a wheel for CPython 3.12 on x86-64 Linux",
            "problem: starlette 1.10.0: needs Python >=3.13",
        ]
    )


def test_what_is_installed_there_is_checked_against_what_python_finds(tmp_path):
    site = tmp_path / "site"
    info = site / "carried_thing-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: carried-thing\nVersion: 1.0\nRequires-Dist: packaging>=1\n"
        "Requires-Dist: no-such-package-here\nRequires-Dist: pytest<1\n"
    )
    command = [sys.executable, "tools/check_wheels.py", "--installed", str(site)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "problem: carried-thing needs no-such-package-here: not installed" in done.stderr
    assert "problem: carried-thing needs pytest<1: found" in done.stderr
    assert "packaging" not in done.stderr
