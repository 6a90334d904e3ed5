"""Per-pattern pair accuracy as a grouped bar chart.

matplotlib is an optional extra: `pip install 'agff-deploy[plot]'`.
"""

from __future__ import annotations

from pathlib import Path

from agff_deploy.errors import MissingDependencyError


def pattern_bar_chart(variants: dict[str, dict[str, float]], path: str | Path, title: str) -> Path:
    """`variants[name][pattern] = accuracy` (0..1) -> PNG at `path`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise MissingDependencyError("plots need matplotlib: pip install 'agff-deploy[plot]'") from err
    patterns = list(next(iter(variants.values())))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(1.1 * len(patterns) + 2, 4))
    for i, (name, accuracy) in enumerate(variants.items()):
        xs = [p + (i - (len(variants) - 1) / 2) * width for p in range(len(patterns))]
        ax.bar(xs, [100 * accuracy[p] for p in patterns], width, label=name)
    ax.set_xticks(range(len(patterns)), patterns, rotation=30, ha="right")
    ax.set_ylabel("pair accuracy (%)")
    ax.set_ylim(0, 100)
    ax.axhline(25, color="grey", linewidth=0.8, linestyle=":")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
