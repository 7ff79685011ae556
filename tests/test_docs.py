"""The documentation cannot rot: its Python examples run, its links resolve, every public name is in api.md.

Every ```python block of README.md and docs/*.md runs: the blocks of one file in order in one
namespace (like a notebook), in a working directory of its own (examples may write files), in two
Python processes that share the files and start when the module begins. A block fenced as
```python no-run is shown but not run (kept for truly expensive snippets). Warnings are errors
there too, as in the test suite.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hbmeta
import hbmeta.plots
from hbmeta.run.config import SECTIONS

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)
TIMEOUT = 400

# Run the blocks of each markdown file in order, in a fresh namespace per file and a working directory
# of its own; print one JSON line per file (whether it ran, and the traceback if not).
_DRIVER = r"""
import json, os, re, sys, traceback, warnings
warnings.simplefilter("error")
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*There are not enough devices.*", category=UserWarning)
for path, cwd in json.loads(sys.argv[1]):
    os.chdir(cwd)
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    namespace, error = {"__name__": "__main__"}, None
    for n, match in enumerate(re.finditer(r"^```python[ \t]*\n(.*?)^```", text, re.S | re.M), start=1):
        line = text[: match.start()].count("\n") + 2
        try:
            exec(compile(match.group(1), f"{path}, block {n} (line {line})", "exec"), namespace)
        except BaseException:
            error = traceback.format_exc()
            break
    print("@@docs-result@@", json.dumps({"path": path, "error": error}), flush=True)
"""


def _blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def doc_runs(tmp_path_factory):
    """Two processes (two cores) share the documents, the longest examples first, balanced by length."""
    # XLA_FLAGS (quicker, less optimised code) come from tests/conftest.py through os.environ
    env = dict(os.environ, CI="1", MPLBACKEND="Agg")
    docs = sorted((p for p in DOCS if _blocks(p)), key=lambda p: -sum(len(b) for b in _blocks(p)))
    groups, sizes = [[], []], [0, 0]
    for path in docs:
        i = sizes.index(min(sizes))
        groups[i].append([str(path), str(tmp_path_factory.mktemp(path.stem))])
        sizes[i] += sum(len(b) for b in _blocks(path))
    procs = [subprocess.Popen([sys.executable, "-c", _DRIVER, json.dumps(g)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for g in groups if g]
    results = {}

    def result(name):
        while name not in results and any(p.returncode is None for p in procs):
            for p in procs:
                if p.returncode is None:
                    out, err = p.communicate(timeout=TIMEOUT)
                    for line in out.splitlines():
                        if line.startswith("@@docs-result@@ "):
                            record = json.loads(line.split(" ", 1)[1])
                            results[Path(record["path"]).name] = record["error"] or ""
                    if p.returncode != 0:
                        results.setdefault("process", f"status {p.returncode}:\n{err[-4000:]}")
                    break
        return results.get(name, results.get("process", f"{name} did not run"))

    yield result
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_the_documents_have_examples():
    names = {p.name for p in DOCS if _blocks(p)}
    assert {"README.md", "concepts.md", "quickstart.md", "bring-your-own-model.md"} <= names


@pytest.mark.parametrize("name", [p.name for p in DOCS if _blocks(p)])
def test_python_examples_run(doc_runs, name):
    error = doc_runs(name)
    assert error == "", f"{name}: an example failed:\n{error[-6000:]}"


def test_every_public_name_is_in_the_api_page():
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    names = set(hbmeta.__all__) | set(hbmeta.plots.__all__)
    missing = sorted(n for n in names if f"`{n}`" not in api)
    assert not missing, f"public names missing from docs/api.md: {missing}"
    for name in names:
        assert hasattr(hbmeta, name) or hasattr(hbmeta.plots, name), name


def test_every_configuration_key_and_command_is_in_the_cli_page():
    cli = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")

    def keys(cls, prefix):
        for f in dataclasses.fields(cls):
            if f.metadata.get("kind") == "section":
                yield from keys(type(f.default), f"{prefix}.{f.name}")
            else:
                yield f"{prefix}.{f.name}"

    missing = [k for name, cls in SECTIONS.items() for k in keys(cls, name) if f"`{k}`" not in cli]
    assert not missing, f"configuration keys missing from docs/cli.md: {missing}"
    for command in ("run", "fit", "predict", "diagnose", "models"):
        assert f"## `hbmeta {command}`" in cli


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_second_as_written():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"^```bash\n(.*?)\n```", readme, re.S | re.M)
    assert len(commands) == 2 and all("\n" not in c for c in commands), commands
    install_run, install_test = commands
    assert install_run.startswith("python3 -m venv .venv") and install_run.endswith("&& hbmeta run")
    assert install_test.startswith("python3 -m venv .venv") and install_test.endswith("python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert install_test in ci and "rm -rf .venv" in ci and '"$rc" -eq 5' in ci


def test_links_and_pictures_resolve():
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", readme)
    assert pictures and all((ROOT / p).read_bytes()[:4] == b"\x89PNG" for p in pictures)
