"""The diagrams of the ideas (plots/diagrams.py): each draws, carries the labels it promises, and saves a PNG."""

import pytest

from plots import diagrams

pytestmark = pytest.mark.slow  # draws and saves every diagram with matplotlib

# The texts each diagram must show (matplotlib's mathtext source, as written on the axes).
PROMISED = {
    "lora_branch_diagram": [r"$x$", r"$W$  (frozen)", r"$A$", r"$B$", r"$\times\,\alpha/r$", "+", r"$y$",
                            r"$y = xW + \frac{\alpha}{r}\,xAB$"],
    "fused_qkv_diagram": ["qkv  (frozen)", "q", "k", "v", r"$A = [A_q \mid A_v]$", r"$B_q$", r"$B_v$",
                          "no LoRA\non k", r"$\times\,\alpha/r$"],
    "adapters_diagram": ["base (frozen)", "spam", "sentiment", "set_active_adapter:\ninstant, no weights\ncopied",
                         r"$W' = W + \frac{\alpha}{r}\,A_\mathrm{spam}B_\mathrm{spam}$",
                         "merge_lora: one plain matmul per layer"],
}


def texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


@pytest.mark.parametrize("name", sorted(PROMISED))
def test_diagram_draws_with_its_labels(name):
    fig = getattr(diagrams, name)()
    shown = texts(fig)
    missing = [label for label in PROMISED[name] if label not in shown]
    assert not missing, f"{name} lacks the labels {missing}"
    assert all(len(ax.patches) >= 5 for ax in fig.axes)  # boxes and arrows, not only text


def test_fused_qkv_diagram_follows_enable():
    shown = texts(diagrams.fused_qkv_diagram(enable=(True, True, True)))
    assert r"$A = [A_q \mid A_k \mid A_v]$" in shown and r"$B_k$" in shown
    assert not any(t.startswith("no LoRA") for t in shown)
    assert r"trainable: $3\,r\,(d + d)$" in shown


def test_save_diagrams_writes_pngs(tmp_path):
    paths = diagrams.save_diagrams(tmp_path / "figures")
    assert [p.name for p in paths] == list(diagrams.DIAGRAMS)
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(diagrams.DIAGRAMS)  # no temp files left
