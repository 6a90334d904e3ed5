"""Pages under docs/ whose numbers come from JSON files: rendered again from those files, they are unchanged.

Each page names its files explicitly, so a file that is gone fails here instead of leaving nothing to compare.
"""

import json
from pathlib import Path

import pytest

from agff_deploy.config import AGFFConfig
from bench import families_report, native_report, real_size_report, results_report
from bench.scale_report import render

DOCS = Path(__file__).resolve().parents[1] / "docs"
SCALE_SOURCES = ("scale-2b.json", "engine-memory-2b.json", "int8-2b.json")
NATIVE_SOURCES = ("bucketing.json", "native-cost-2b.json")


def test_the_2b_scale_page_is_what_its_json_files_render():
    files = [DOCS / name for name in SCALE_SOURCES]
    page = render(*(json.loads(f.read_text()) for f in files), tuple(f"docs/{f.name}" for f in files))
    assert (DOCS / "scale-2b.md").read_text() == page


def test_the_families_page_is_what_its_json_files_render():
    assert (DOCS / "families-2b.md").read_text() == families_report.render(families_report.load())


def test_the_real_size_details_page_is_what_its_json_files_render():
    assert (DOCS / "real-size-2b.md").read_text() == real_size_report.render(real_size_report.load())


def test_the_native_resolution_page_is_what_its_json_files_render():
    files = [DOCS / name for name in NATIVE_SOURCES]
    page = native_report.render(*(json.loads(f.read_text()) for f in files), tuple(f"docs/{f.name}" for f in files))
    assert (DOCS / "native-resolution.md").read_text() == page


def test_the_results_page_is_what_its_json_files_render():
    pytest.importorskip("tritonclient", reason="bench.serve's table needs the serve extra")
    assert (DOCS / "results.md").read_text() == results_report.render(results_report.load())


def test_every_file_the_results_page_is_rendered_from_is_there():
    assert set(results_report.load()) == {source.name for source in results_report.SOURCES}


def test_every_json_file_in_docs_is_rendered_into_a_page():
    rendered = {source.name for source in results_report.SOURCES} | set(SCALE_SOURCES) | set(NATIVE_SOURCES)
    rendered |= {name for files in families_report.SOURCES.values() for name in files}
    rendered |= set(real_size_report.SOURCES)
    assert {path.name for path in DOCS.glob("*.json")} == rendered


def test_a_missing_file_stops_the_render(tmp_path):
    with pytest.raises(FileNotFoundError):
        results_report.load(tmp_path)


def test_a_file_that_records_its_commit_and_machine_is_cited_by_them():
    source = results_report.Source("ablation-lora.json", "python -m bench.ablation", "d59bec1")
    report = {"commit": "0123456789abcdef-dirty", "machine": {"cores": 16, "memory_bytes": 128 * 2**30}}
    cited = results_report.origin(source, report)
    assert cited == f"file `docs/{source.name}`, commit `0123456789ab`, 16 cores, 128 GiB"
    assert results_report.origin(source, {}) == f"file `docs/{source.name}`, added in commit `{source.commit}`"


def test_the_demos_ega_default_follows_the_regime_where_the_baseline_works():
    paired = results_report.load()[results_report.FINETUNE[2].name]["paired"]
    assert results_report.ega_helps(paired) == (AGFFConfig.ega_alpha > 0)


def test_a_file_without_a_commit_of_its_own_or_a_named_one_is_refused():
    with pytest.raises(ValueError, match="docs/x.json records no commit"):
        results_report.origin(results_report.Source("x.json", "python -m bench.x"), {})
