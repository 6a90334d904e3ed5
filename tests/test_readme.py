"""What the README tells a new user holds: its versions, its snippet, its outputs, its numbers."""

import configparser
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bench.ablation import markdown_tables
from bench.serve import table as serving_table

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _commands() -> list[list[str]]:
    """Every indented command line of the README, continuation lines joined and comments dropped."""
    lines, joined = [], ""
    for line in README.splitlines():
        if not line.startswith("    ") or line.lstrip().startswith(("|", "-")):
            continue
        joined += line.strip().removesuffix("\\")
        if not line.endswith("\\"):
            lines.append(joined)
            joined = ""
    return [shlex.split(line, comments=True) for line in lines if line.split()[0] in COMMANDS]


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


def test_every_output_a_readme_command_writes_is_ignored_by_git():
    outputs = []
    for words in _commands():
        for flag, value in zip(words, words[1:], strict=False):
            if flag in OUTPUT_FLAGS:
                outputs += [value, f"{value}.paths.txt"] if value.endswith(".npy") else [value]
        if words[:3] == ["python", "-m", "agff_deploy.base"]:
            outputs.append(words[4])
    outputs = [o for o in outputs if not Path(o).is_absolute()]
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


@pytest.mark.parametrize("report", sorted(p.name for p in (REPO / "docs").glob("ablation*.json")))
def test_every_ablation_table_is_what_bench_ablation_wrote(report):
    assert markdown_tables(json.loads((REPO / "docs" / report).read_text())) in README


@pytest.mark.parametrize("report", sorted(p.name for p in (REPO / "docs").glob("serve-bench*.json")))
def test_every_serving_table_is_what_bench_serve_wrote(report):
    assert serving_table(json.loads((REPO / "docs" / report).read_text())) in README
