"""`python -m agff_deploy.eval SOURCE --bench NAME`: evaluate a checkpoint, ONNX bundle or engine.

Benchmarks: synthetic-mmvp, synthetic-global, mmvp-vlm (--data DIR), mmeb (--data DIR),
run by `agff_deploy.eval.evaluate`. Prints a table; --json writes the numbers
(and, for MMVP benchmarks, a per-pattern bar chart beside them when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agff_deploy.errors import AgffError, InputError, MissingDependencyError, print_error
from agff_deploy.provenance import provenance

from .evaluate import BENCHES, evaluate
from .mmeb import SCORED_SUBSETS
from .synthetic import EVAL_SEED


def _percent(value: float | None) -> str:
    return "   n/a" if value is None else f"{100 * value:6.1f}"


def _aligned(header: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    """Two columns, the first as wide as its longest entry, so long names (`Structural Character`) keep it aligned."""
    width = max(len(name) for name, _ in [header, *rows]) + 2
    value_width = max(len(value) for _, value in [header, *rows])
    return "\n".join(f"{name:<{width}}{value:>{value_width}}" for name, value in [header, *rows])


def _mmvp_table(result: dict[str, Any]) -> str:
    rows = [(pattern, _percent(acc)) for pattern, acc in result["per_pattern"].items()]
    return _aligned(("pattern", "pair acc %"), [*rows, ("mean", _percent(result["mean"]))])


def _mmeb_table(result: dict[str, Any]) -> str:
    rows = [(name, _percent(hit)) for name, hit in result["per_subset"].items()]
    rows += [(f"[{task}]", _percent(hit)) for task, hit in result["per_meta_task"].items()]
    label = f"overall ({result['scored_subsets']} of {len(SCORED_SUBSETS)} MMEB subsets)"
    rows.append((label, _percent(result["overall"])))
    rows += [(f"{name} (outside MMEB's score)", _percent(hit)) for name, hit in result["outside_score"].items()]
    return _aligned(("subset", "hit@1 %"), rows)


def table(bench: str, result: dict[str, Any]) -> str:
    if bench in ("synthetic-mmvp", "mmvp-vlm"):
        return _mmvp_table(result)
    if bench == "synthetic-global":
        i2t, t2i = result["image_to_text"], result["text_to_image"]
        return (
            f"{'direction':<14}{'R@1':>7}{'R@5':>7}\n"
            f"{'image->text':<14}{100 * i2t['R@1']:7.1f}{100 * i2t['R@5']:7.1f}\n"
            f"{'text->image':<14}{100 * t2i['R@1']:7.1f}{100 * t2i['R@5']:7.1f}"
        )
    return _mmeb_table(result)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m agff_deploy.eval", description=__doc__)
    p.add_argument("source", help="checkpoint folder, bundle folder, ONNX graph or TensorRT plan")
    p.add_argument("--bench", required=True, choices=BENCHES)
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="evaluation seed for the synthetic benchmarks")
    p.add_argument("--pairs-per-pattern", type=int, default=150)
    p.add_argument("--data", type=Path, help="benchmark folder for mmvp-vlm and mmeb")
    p.add_argument("--image-root", type=Path, help="folder MMEB image paths are relative to (default: --data)")
    p.add_argument("--backend", help="force a runtime backend")
    p.add_argument("--precision", help="bundle precision to evaluate (default: fp32)")
    p.add_argument("--json", type=Path, help="write the numbers here (and a PNG chart beside them)")
    return p


def _prepare_json(path: Path) -> None:
    """Create the --json folder before evaluating, so a bad path fails in seconds instead of losing the numbers."""
    if path.is_dir():
        raise InputError(f"--json {path} is a folder; give a file name such as {path / 'result.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(
            f"--json {path}: cannot create the folder {path.parent} ({err.strerror}: {err.filename}); "
            "choose another path"
        ) from err


def _write_json(path: Path, bench: str, result: dict[str, Any]) -> None:
    """allow_nan=False: NaN is not JSON, and a reader would choke on it far from here."""
    path.write_text(json.dumps({"bench": bench, **result}, indent=2, allow_nan=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.json:
            _prepare_json(args.json)
        result = evaluate(args.source, args.bench, args.seed, args.pairs_per_pattern, args.data, args.image_root,
                          args.backend, args.precision)  # fmt: skip
    except (AgffError, OSError) as err:
        return print_error(err)
    print(table(args.bench, result))
    if args.json:
        _write_json(args.json, args.bench, {**result, **provenance("agff_deploy.eval", args, argv)})
        if "per_pattern" in result:
            _chart({Path(args.source).name: result["per_pattern"]}, args.json.with_suffix(".png"), args.bench)
    return 0


def _chart(variants: dict[str, dict[str, float]], path: Path, title: str) -> None:
    from .plot import pattern_bar_chart

    try:
        print(f"chart: {pattern_bar_chart(variants, path, title)}")
    except MissingDependencyError as err:
        print(f"no chart: {err}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
