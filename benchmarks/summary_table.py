"""How the sampling benchmarks print an `evaluate_pipeline` summary: one header and one format per figure, so a
table's columns read the same in every benchmark's output and in docs/results.md."""

COLUMNS = {  # summary key: (column header, format)
    "coherence_db": ("coherence dB", "{:.1f}"),
    "colour_adherence": ("colour", "{:.0%}"),
    "shape_adherence": ("shape", "{:.0%}"),
    "empty_layers": ("empty layers", "{:.0%}"),
    "blockiness": ("blockiness", "{:.2f}"),
    "alpha_stutter": ("stutter", "{:.2f}"),
}
SAMPLES = ("coherence_db", "colour_adherence", "shape_adherence", "blockiness")


def header(lead: list[str], keys: tuple[str, ...] = SAMPLES, tail: tuple[str, ...] = ()) -> str:
    """The markdown header and rule of a table: `lead` columns, the summary's `keys`, then `tail` columns."""
    names = [*lead, *(COLUMNS[key][0] for key in keys), *tail]
    return "| " + " | ".join(names) + " |\n" + "|---" * len(names) + "|"


def row(lead: list[object], summary: dict[str, float], keys: tuple[str, ...] = SAMPLES, tail: tuple = ()) -> str:
    """One markdown row in `header`'s order."""
    cells = [*map(str, lead), *(COLUMNS[key][1].format(summary[key]) for key in keys), *map(str, tail)]
    return "| " + " | ".join(cells) + " |"
