"""What the README tells a new user holds: its versions, its set-up commands, its snippet, its outputs."""

import configparser
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
DOCUMENTS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))


def _commands() -> list[list[str]]:
    """Every command line of the README's and the manual's bash blocks, continuation lines joined, comments dropped."""
    lines, joined = [], ""
    for path in DOCUMENTS:
        for block in re.findall(r"^```bash\n(.*?)^```$", path.read_text(), re.M | re.S):
            for line in block.splitlines():
                joined += line.strip().removesuffix("\\")
                if not line.endswith("\\"):
                    lines.append(joined)
                    joined = ""
    return [shlex.split(line, comments=True) for line in lines if line.split() and line.split()[0] in COMMANDS]


COMMANDS = ("python", "agff-run", "pip")
OUTPUT_FLAGS = ("--out", "-o", "--index", "--json", "--work")


def test_the_readme_names_the_minimum_python_setup_cfg_accepts():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    minimum = config["options"]["python_requires"].removeprefix(">=")
    assert re.search(r"The package itself needs Python (\d+\.\d+) or newer", README).group(1) == minimum


def test_the_set_up_commands_name_the_python_ci_runs_them_with():
    ci = (REPO / ".ci" / "run").read_text()
    setup_python = re.search(r"with Python (\d+\.\d+) and pip", README).group(1)
    assert f"/usr/bin/python{setup_python}" in ci


def test_the_readmes_test_command_is_what_ci_runs_without_its_quiet_flags():
    ci = (REPO / ".ci" / "run").read_text()
    ci_command = next(line for line in ci.splitlines() if line.startswith("pip install") and "pytest" in line)
    assert ci_command.replace(" -q", "") in README.splitlines()


def test_every_output_a_documented_command_writes_is_ignored_by_git():
    outputs = []
    for words in _commands():
        for flag, value in zip(words, words[1:], strict=False):
            if flag in OUTPUT_FLAGS:
                outputs += [value, f"{value}.paths.txt"] if value.endswith(".npy") else [value]
        if words[:3] == ["python", "-m", "agff_deploy.base"]:
            outputs.append(words[4])
    # absolute paths lie outside the repository; docs/ pages and their JSON files are what render commands write
    outputs = [o for o in outputs if not Path(o).is_absolute() and not o.startswith("docs/")]
    assert {"ckpt-2b", "idx/", "emb.npy", "mmvp.json"} <= set(outputs)
    ignored = subprocess.run(["git", "check-ignore", *outputs], cwd=REPO, capture_output=True, text=True)
    assert set(ignored.stdout.split()) == set(outputs)


def test_the_python_snippet_runs_as_written_on_an_exported_bundle(tmp_path, tiny_bundle):
    snippet = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    (tmp_path / "bundle").symlink_to(tiny_bundle)
    (tmp_path / "samples").symlink_to(REPO / "samples")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_readme_is_an_entry_page_not_the_manual():
    lines = README.count("\n")
    assert 150 <= lines <= 250, lines
