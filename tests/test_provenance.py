"""Every JSON record a bench, evaluation or report command writes says which commit, command, configuration,
machine and time produced it."""

import argparse
import ast
import json
import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agff_deploy.provenance import KEYS, LIBRARIES, provenance

REPO = Path(__file__).resolve().parents[1]


def test_the_record_holds_the_commit_command_configuration_machine_and_utc_time():
    args = argparse.Namespace(batch=4, out=Path("runs/a"), seeds=[0, 1])
    record = provenance("bench.example", args, ["--batch", "4", "--out", "runs/a"])
    assert tuple(record) == KEYS
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, check=True)
    assert record["commit"].removesuffix("-dirty") == head.stdout.strip()
    assert record["command"] == ["python", "-m", "bench.example", "--batch", "4", "--out", "runs/a"]
    assert record["config"] == {"batch": 4, "out": "runs/a", "seeds": [0, 1]}
    machine = record["machine"]
    assert machine["cores"] == os.cpu_count() and machine["memory_bytes"] > 2**30
    assert set(machine["libraries"]) == set(LIBRARIES) and machine["libraries"]["numpy"]
    assert abs(datetime.fromisoformat(record["utc"]) - datetime.now(timezone.utc)) < timedelta(minutes=1)
    assert json.loads(json.dumps(record)) == record


def _writes_json(tree: ast.Module) -> bool:
    """Whether a module calls json.dump / json.dumps, agff_deploy.atomic_files.write_json or bench.records.publish."""
    return any(isinstance(node, ast.Call) and _is_json_writer(node.func) for node in ast.walk(tree))


def _is_json_writer(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("write_json", "publish")
    return (
        isinstance(func, ast.Attribute)
        and func.attr in ("dump", "dumps")
        and isinstance(func.value, ast.Name)
        and func.value.id == "json"
    )


def _provenance_modules(tree: ast.Module) -> list[str]:
    """The module names passed to `provenance(...)` calls."""
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "provenance"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]


JSON_WRITERS = sorted(
    path.relative_to(REPO)
    for path in [*REPO.glob("bench/*.py"), REPO / "agff_deploy/eval/__main__.py", REPO / "export/engine_memory.py"]
    if _writes_json(ast.parse(path.read_text())) and path.name != "records.py"  # writes what its callers give it
)


def test_the_bench_commands_that_write_json_are_all_checked():
    assert {p.stem for p in JSON_WRITERS if p.parent.name == "bench"} >= {
        "ablation", "backends", "bucketing", "gpu_scale", "int8", "precision_cost", "scale", "search", "serve",
        "shared_prefix", "throughput", "train_memory",
    }  # fmt: skip


@pytest.mark.parametrize("path", JSON_WRITERS, ids=str)
def test_each_command_that_writes_json_adds_provenance_under_its_own_module_name(path):
    module = ".".join(path.with_suffix("").parts)
    module = module.removesuffix(".__main__")
    assert _provenance_modules(ast.parse((REPO / path).read_text())) == [module]
