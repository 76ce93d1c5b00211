"""The committed mutation-testing record (results/mutation/score.json) is consistent, meets the target, and the
pages that quote it quote it: results/mutation/README.md, docs/testing.md and README."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = json.loads((ROOT / "results" / "mutation" / "score.json").read_text())
TARGET = 0.90  # of the non-equivalent mutants of every module, killed (a timeout counts as killed)
CORE = {"gpt.generate", "gpt.train", "classify.train", "classify.model", "lora.layers", "lora.merge", "lora.apply"}


def killed_share(row: dict) -> float:
    return (row["killed"] + row["timeout"]) / (row["total"] - row["equivalent"])


def table_rows() -> list[str]:
    rows = {m: r for m, r in RECORD["modules"].items()}
    lines = [f"| `{m}` | {r['total']:,} | {r['killed']:,} | {r['timeout']} | {r['survived']} | {r['equivalent']} | "
             f"{100 * killed_share(r):.1f} % |" for m, r in rows.items()]
    total = {k: sum(r[k] for r in rows.values()) for k in ("total", "killed", "timeout", "survived", "equivalent")}
    lines.append(f"| all | {total['total']:,} | {total['killed']:,} | {total['timeout']} | {total['survived']} | "
                 f"{total['equivalent']} | {100 * killed_share(total):.1f} % |")
    return lines


def test_every_core_module_was_measured_and_meets_the_target():
    assert set(RECORD["modules"]) == CORE
    for module, row in RECORD["modules"].items():
        assert row["killed"] + row["timeout"] + row["survived"] + row["no_tests"] == row["total"], module
        assert killed_share(row) >= TARGET, f"{module}: {100 * killed_share(row):.1f} % of its non-equivalent mutants"


def test_every_survivor_is_named_with_a_reason():
    """Each module's survivors are listed by name, each equivalent or not, with why; the counts agree."""
    survivors = RECORD["survivors"]
    for module, row in RECORD["modules"].items():
        mine = {n: v for n, v in survivors.items() if n.startswith(module + ".")}
        assert len(mine) == row["survived"], module
        assert sum(v["equivalent"] for v in mine.values()) == row["equivalent"], module
        assert all(len(v["why"]) > 20 for v in mine.values()), module


def test_the_pages_quote_the_record():
    for page in ("results/mutation/README.md", "docs/testing.md"):
        text = (ROOT / page).read_text()
        missing = [row for row in table_rows() if row not in text]
        assert not missing, f"{page} does not quote: {missing}"
    total = table_rows()[-1].split("|")[-2].strip()  # "99.4 %"
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"kills {total} of the non-equivalent mutants" in readme
    listed = (ROOT / "results" / "mutation" / "README.md").read_text()
    assert all(f"`{name}`" in listed for name in RECORD["survivors"])
