"""The repository's shape (docs/design.md): scripts import only the package, no sys.path edits, the
layout table of docs/design.md and the rest of that page name paths that exist."""

import ast
import os
import re

from tests.scripts import REPO_ROOT

SCRIPT_FOLDERS = ("evaluation", "tools", "bench")  # folders of programs, not packages
SKIPPED_DIRS = {
    ".venv",
    ".git",
    ".cache",
    "__pycache__",
    "demo_output",
    "output_data",
    "ckpts",
    ".pytest_cache",
    "bench_out",  # what the benches write (git-ignored)
}


def is_build_output(name):
    """What installing, testing or the demo leaves at the top level (the editable install's egg-info)."""
    return name in SKIPPED_DIRS or name.endswith(".egg-info") or name == "build"


def python_files():
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        for name in files:
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(folder, name), REPO_ROOT)


def scripts():
    """Every program of the repository: top-level scripts, evaluation/, tools/, bench/."""
    return sorted(p for p in python_files() if "/" not in p or p.split("/")[0] in SCRIPT_FOLDERS)


def module_name(path):
    return path[:-3].replace("/", ".")


def imported_modules(path, root=REPO_ROOT):
    """(line, module) for every import in a file, at any depth, and every importlib.import_module("...") call."""
    with open(os.path.join(root, path), encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def test_the_checker_sees_every_kind_of_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import RL_stage2\ndef f():\n    from evaluation.eval import main\n    import importlib\n"
        "    importlib.import_module('train_verifier')\nfrom tools import get_smollm2\n"
    )
    assert sorted(imported_modules("sample.py", root=str(tmp_path))) == [
        (1, "RL_stage2"),
        (3, "evaluation.eval"),
        (3, "evaluation.eval.main"),
        (4, "importlib"),
        (5, "train_verifier"),
        (6, "tools"),
        (6, "tools.get_smollm2"),
    ]


def test_no_script_is_imported_by_any_module_or_test():
    assert all(os.path.isdir(os.path.join(REPO_ROOT, folder)) for folder in SCRIPT_FOLDERS)
    script_modules = {module_name(p) for p in scripts()}
    assert {
        "RL_stage2",
        "SFT_stage1",
        "train_verifier",
        "evaluation.eval",
        "tools.get_smollm2",
        "demo",
    } <= script_modules
    offenders = []
    for path in python_files():
        for line, module in imported_modules(path):
            # a script, or the folders that hold scripts (they are no packages)
            if module in script_modules or module.split(".")[0] in SCRIPT_FOLDERS:
                offenders.append(f"{path}:{line} imports {module}")
    assert offenders == []


def test_scripts_and_the_package_never_import_the_tests():
    offenders = [
        f"{path}:{line} imports {module}"
        for path in python_files()
        if not path.startswith("tests/")
        for line, module in imported_modules(path)
        if module.split(".")[0] in ("tests", "conftest")
    ]
    assert offenders == []


def test_the_package_imports_no_script_and_no_test_helper():
    package = [p for p in python_files() if p.startswith("huatuo_o1/")]
    assert len(package) > 15
    for path in package:
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            assert top not in ("tests", "evaluation", "tools", "bench") and module not in {
                module_name(p) for p in scripts()
            }, f"{path}:{line} imports {module}"


def test_no_sys_path_edits_outside_conftest():
    edits = []
    for path in python_files():
        if path == "tests/test_structure.py":
            continue  # this checker names what it looks for
        with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                edits.append(path)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "sys.path." in node.value:
                edits.append(path)  # code run by `python -c`
    assert sorted(set(edits)) == ["tests/conftest.py"]
    for folder in ("evaluation", "tools", "bench"):
        for name in os.listdir(os.path.join(REPO_ROOT, folder)):
            if name.endswith(".sh"):
                with open(os.path.join(REPO_ROOT, folder, name), encoding="utf-8") as f:
                    assert "sys.path" not in f.read(), name


def paths_named_in(doc, pattern):
    with open(os.path.join(REPO_ROOT, doc), encoding="utf-8") as f:
        text = f.read()
    return text, re.findall(pattern, text)


def existing(name):
    """A path as a table names it: 'templates/*' style globs and trailing slashes allowed."""
    path = os.path.join(REPO_ROOT, name.rstrip("/").split("*")[0])
    return os.path.exists(path)


def layout_section(text):
    return text.split("## Repository layout", 1)[1].split("\n## ", 1)[0]


def test_layout_table_names_paths_that_exist():
    """docs/design.md's layout table: each row's first cell names paths from the repository root; its description
    may name files inside them (`scoring.py` in the `huatuo_o1/evaluation/` row)."""
    text, _ = paths_named_in("docs/design.md", "")
    table = layout_section(text)
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) > 20
    missing, listed = [], set()
    for first, description in rows:
        paths = re.findall(r"`([^`\s]+)`", first)
        listed.update(p.rstrip("/").split("/")[0] for p in paths)
        missing += [p for p in paths if not existing(p)]
        folders = [p if p.endswith("/") else os.path.dirname(p) for p in paths]
        for name in re.findall(r"`([^`\s]+)`", description):
            if "/" in name or "." in name:  # a path, not a command
                if not existing(name) and not any(existing(os.path.join(f, name)) for f in folders):
                    missing.append(f"{name} (row {paths[0]})")
    assert missing == []
    # and the repository's top level is in the table
    top = {name for name in os.listdir(REPO_ROOT) if not name.startswith(".") and not is_build_output(name)}
    assert top - listed == set()


def test_design_doc_names_paths_that_exist():
    """The rest of docs/design.md names paths from the repository root (the layout table, checked above, may name a
    file by its folder's row)."""
    text, _ = paths_named_in("docs/design.md", "")
    text = text.replace(layout_section(text), "")
    named = re.findall(r"`([\w./*-]+/[\w./*-]*|[\w-]+\.(?:py|sh|txt|json|jinja|toml))`", text)
    assert len(named) > 20
    missing = [name for name in named if not existing(name)]
    assert missing == []
