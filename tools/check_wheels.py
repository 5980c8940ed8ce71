"""Check that the packages carried to the GPU machine (tools/gpu_wheels.sh) install and import there.

Here (before the trip), against the carried files and tools/gpu_machine_packages.txt:
    python tools/check_wheels.py .gpu_wheels
  every file is a wheel for CPython 3.12 on x86-64 Linux (or deepspeed's source archive), one version per
  package, Requires-Python admits 3.12, and every requirement (extras left out, markers read for CPython 3.12
  on Linux x86-64) is met by a carried package or by one the machine has. A machine package whose version is
  not known here is listed, to be confirmed there. Exit 1 on the first kind of problem, naming each.

There (after `pip install --target DIR`), against what Python really finds:
    python3 tools/check_wheels.py --installed DIR
  every requirement of every package installed in DIR, checked against the installed versions. Exit 1 when
  one is not met (bench/gpu_check.sh logs it and runs the check all the same: a step that needs the package
  then fails and says why).
"""

import argparse
import email.parser
import importlib.metadata
import os
import re
import sys
import tarfile
import zipfile

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

MACHINE_PACKAGES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_machine_packages.txt")
PYTHON = "3.12"
# The machine: CPython 3.12 on x86-64 Linux with glibc new enough for manylinux_2_28 (pip's tags there).
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 4, -1)] + ["manylinux2014_x86_64", "linux_x86_64"]
MARKER_ENVIRONMENT = {
    "python_version": PYTHON,
    "python_full_version": PYTHON + ".3",
    "implementation_name": "cpython",
    "implementation_version": PYTHON + ".3",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "sys_platform": "linux",
    "os_name": "posix",
    "platform_release": "",
    "platform_version": "",
    "extra": "",
}


def machine_packages(path=MACHINE_PACKAGES):
    """{canonical name: Version or None (not known)} of what the GPU machine already has."""
    found = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                name, _, version = line.partition("==")
                found[canonicalize_name(name)] = Version(version) if version else None
    return found


def metadata_of(path):
    """The core metadata (an email.message.Message) of a wheel or a source archive."""
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
            text = archive.read(name).decode("utf-8")
    else:
        with tarfile.open(path) as archive:
            member = next(m for m in archive.getmembers() if re.fullmatch(r"[^/]+/PKG-INFO", m.name))
            text = archive.extractfile(member).read().decode("utf-8")
    return email.parser.Parser().parsestr(text)


def requirements_that_apply(metadata):
    """Requires-Dist entries that hold on the machine: markers read for CPython 3.12 on Linux, extras left out."""
    wanted = []
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(MARKER_ENVIRONMENT):
            wanted.append(requirement)
    return wanted


def carried_files(folder):
    """(path, canonical name, Version, tags or None for a source archive) of each package file in folder."""
    found = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".whl"):
            dist, version, _, tags = parse_wheel_filename(name)
            found.append((path, canonicalize_name(dist), version, tags))
        elif name.endswith((".tar.gz", ".zip")):
            dist, version = parse_sdist_filename(name)
            found.append((path, canonicalize_name(dist), version, None))
    return found


def check_carried(folder, machine):
    """Problems (each a line) with the carried set; also prints what is carried and what is left to confirm there."""
    problems, to_confirm = [], []
    supported = set(cpython_tags((3, 12), platforms=PLATFORMS)) | set(compatible_tags((3, 12), platforms=PLATFORMS))
    files = carried_files(folder)
    carried = {}
    for path, name, version, tags in files:
        if name in carried:
            problems.append(f"{name}: two versions carried ({carried[name]} and {version}); pip refuses both")
        carried[name] = version
        if tags is not None and not tags & supported:
            problems.append(f"{os.path.basename(path)}: not a wheel for CPython {PYTHON} on x86-64 Linux")
    for path, name, version, _ in files:
        metadata = metadata_of(path)
        requires_python = metadata.get("Requires-Python")
        if requires_python and not SpecifierSet(requires_python).contains(PYTHON + ".3"):
            problems.append(f"{name} {version}: needs Python {requires_python}")
        for requirement in requirements_that_apply(metadata):
            wanted = canonicalize_name(requirement.name)
            where = f"{name} {version} needs {requirement}"
            if wanted in carried:
                if not requirement.specifier.contains(carried[wanted], prereleases=True):
                    problems.append(f"{where}: carried {carried[wanted]}")
            elif wanted in machine:
                if machine[wanted] is None:
                    if str(requirement.specifier):
                        to_confirm.append(f"{where} (the machine's version is not known here)")
                elif not requirement.specifier.contains(machine[wanted], prereleases=True):
                    problems.append(f"{where}: the machine has {machine[wanted]}; carry one that fits")
            else:
                problems.append(f"{where}: neither carried nor on the machine; add it to tools/gpu_wheels.sh")
    shadowed = sorted(name for name in carried if name in machine)
    print(f"{len(files)} packages carried: {', '.join(f'{name} {version}' for _, name, version, _ in files)}")
    if shadowed:
        print(f"carried although the machine has them (the carried version comes first there): {', '.join(shadowed)}")
    for line in sorted(set(to_confirm)):
        print(f"to confirm there: {line}")
    return problems


def check_installed(target):
    """Problems with the packages installed in target, against what Python finds (target first on the path)."""
    problems = []
    for dist in importlib.metadata.distributions(path=[target]):
        name = dist.metadata["Name"]
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            try:
                installed = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                problems.append(f"{name} needs {requirement}: not installed")
                continue
            if not requirement.specifier.contains(installed, prereleases=True):
                problems.append(f"{name} needs {requirement}: found {installed}")
    return problems


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("folder", nargs="?", help="the carried files (here: .gpu_wheels)")
    parser.add_argument("--installed", help="the folder pip installed them into (on the GPU machine)")
    parser.add_argument("--machine_packages", default=MACHINE_PACKAGES)
    args = parser.parse_args()
    if args.installed:
        problems = check_installed(args.installed)
    elif args.folder:
        problems = check_carried(args.folder, machine_packages(args.machine_packages))
    else:
        parser.error("give the folder of carried files, or --installed DIR")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print("requirements: all met" if not problems else f"requirements: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
