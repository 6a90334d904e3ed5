"""Pages under docs/ whose numbers come from JSON files: rendered again from those files, they are unchanged."""

import json
from pathlib import Path

from bench.scale_report import render

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_2b_scale_page_is_what_its_json_files_render():
    scale, memory = DOCS / "scale-2b.json", DOCS / "engine-memory-2b.json"
    page = render(
        json.loads(scale.read_text()), json.loads(memory.read_text()), (f"docs/{scale.name}", f"docs/{memory.name}")
    )
    assert (DOCS / "scale-2b.md").read_text() == page
