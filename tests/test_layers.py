"""The architecture, checked: stage layers (import-linter), no command-line flag in library errors,
imports at module top unless a comment says why, and a command line that loads no heavy library for help."""

import ast
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hbmeta"


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def test_layer_contracts_hold():
    exe = shutil.which("lint-imports") or str(pathlib.Path(sys.executable).with_name("lint-imports"))
    done = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broken" in done.stdout and " 0 broken" in done.stdout, done.stdout


def _cli_flags():
    from hbmeta.cli.main import _parser

    flags = set()
    stack = [_parser()]
    while stack:
        p = stack.pop()
        for action in p._actions:
            flags.update(s for s in action.option_strings if s.startswith("--") and s != "--help")
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                stack.extend(action.choices.values())
    return flags


def _strings(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_library_messages_name_no_command_line_flag():
    flags = _cli_flags()
    assert {"--out", "--method", "--seed"} <= flags
    found = []
    for path in _modules():
        if path.parent.name == "cli":
            continue
        tree = ast.parse(path.read_text("utf-8"))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for flag in flags:
                    if flag in node.value.replace("--xla", ""):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {flag}")
    assert not found, found


def test_imports_inside_functions_say_why():
    unexplained = []
    for path in _modules():
        lines = path.read_text("utf-8").splitlines()
        if any(line.startswith("# imports inside functions:") for line in lines):
            continue  # the module says once why all its imports are deferred
        tree = ast.parse("\n".join(lines))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    here = lines[node.lineno - 1]
                    before = lines[node.lineno - 2] if node.lineno > 1 else ""
                    if "#" not in here and not before.strip().startswith("#"):
                        unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}: {here.strip()}")
    assert not unexplained, unexplained


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["models"]])
def test_quick_commands_load_no_heavy_library(argv):
    code = ("import sys; from hbmeta.cli.main import main; rc = main(sys.argv[1:]); "
            "heavy = {'jax', 'numpyro', 'arviz', 'matplotlib'} & {m.split('.')[0] for m in sys.modules}; "
            "assert rc == 0 and not heavy, (rc, heavy)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0, done.stderr
