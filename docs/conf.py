"""Sphinx configuration of the course website (MyST-NB + sphinx-book-theme), built offline.

    .venv/bin/python -m sphinx -W --keep-going -q -b html -c docs -d docs/_build/doctrees . docs/_build/html
    .venv/bin/python -m http.server -d docs/_build/html 8000

The source folder is the repository root, so README.md, TEACHING.md, the notebooks and the other READMEs are
rendered where they live and their relative links (as GitHub shows them) are the site's links. Only the files
in `include_patterns` become pages; the chapters are globbed, so a new `notebooks/NN_*.ipynb` is picked up
without a change here. The committed outputs are shown as committed: nothing is executed.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(ROOT), str(DOCS / "_ext")]  # the packages for autodoc; the site's own extension

project = "lora-from-scratch"
author = "the lora-from-scratch authors"
copyright = "the lora-from-scratch authors"  # noqa: A001 (Sphinx's name)

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.viewcode", "course_site"]

root_doc = "README"
include_patterns = [
    "README.md", "TEACHING.md", "BOOK_MAP.md", "data/README.md", "benchmarks/README.md",
    "benchmarks/results/*.md", "results/spam_comparison.md",
    "notebooks/[0-9][0-9]_*.ipynb", "docs/*.md", "docs/api/*.md", "docs/_generated/*/*.md",
]
exclude_patterns = [".git", ".venv", "runs", "docs/_build", "**/.ipynb_checkpoints", "solutions", "tests"]

# The notebooks are committed with the outputs of a full run; the site shows exactly those.
nb_execution_mode = "off"
nb_merge_streams = True
nb_render_markdown_format = "myst"  # a cell's Markdown output (a results table) renders as tables, like the text
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # a chapter's title is its only h1; notebooks start at "## 1." often

# MathJax 3, served from the site itself (course_site copies the files from the django-static-mathjax wheel).
mathjax_path = "mathjax/tex-mml-chtml.js"

html_theme = "sphinx_book_theme"
html_title = "LoRA from scratch"
html_static_path = []
html_extra_path = ["_extra"]  # index.html: the site's address opens the front page
html_sourcelink_suffix = ""  # _sources/ keeps a chapter's own .ipynb name
html_theme_options = {
    "use_download_button": True,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_context = {"default_mode": "auto"}  # light or dark as the reader's system says (and no console error)

autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"

# The "Code for this chapter" box on each chapter page: chapter number -> scripts (scripts/*.py) and the public
# names of the package's API it teaches (documented on docs/api/*). A chapter missing here gets no box.
CHAPTER_CODE = {
    1: {"scripts": ["ch01_tokens.py"],
        "api": ["gpt.get_tokenizer", "gpt.text_to_token_ids", "gpt.token_ids_to_text"]},
    2: {"scripts": ["ch02_attention.py"],
        "api": ["gpt.causal_attention", "gpt.MultiHeadAttention", "gpt.FusedMultiHeadAttention", "gpt.fuse_qkv"]},
    3: {"scripts": ["ch03_gpt_model.py"],
        "api": ["gpt.GPTModel", "gpt.TransformerBlock", "gpt.GPTConfig", "gpt.generate", "gpt.parameter_table"]},
    4: {"scripts": ["pretrain.py"], "api": ["gpt.load_gpt2", "gpt.GPTModel"]},
    5: {"scripts": ["ch05_low_rank.py"],
        "api": ["lora.lora_parameter_count", "lora.full_parameter_count", "lora.scaling_factor", "lora.LoraConfig"]},
    6: {"scripts": ["ch06_lora_layers.py"],
        "api": ["lora.LoRALayer", "lora.LinearWithLoRA", "lora.FusedQKVWithLoRA", "lora.apply_lora",
                "lora.merge_lora", "lora.unmerge_lora"]},
    7: {"scripts": ["finetune_spam.py", "compare_finetuning.py", "predict.py"],
        "api": ["classify.finetune", "classify.model", "classify.train", "classify.comparison",
                "classify.bag_of_words"]},
    8: {"scripts": ["ch08_adapters.py", "compare_sentiment.py"],
        "api": ["lora.save_adapter", "lora.load_adapter", "lora.add_adapter", "lora.set_active_adapter",
                "lora.EmbeddingWithLoRA", "lora.export_peft_adapter", "classify.tasks"]},
    9: {"scripts": ["ch09_inside_adapter.py"],
        "api": ["lora.lora_state_dict", "peft_methods.apply_dora", "peft_methods.apply_bottleneck_adapters",
                "peft_methods.apply_prefix_tuning", "classify.adapter_study"]},
    10: {"scripts": ["ch10_lora_family.py", "compare_lora_family.py", "rslora_rank_sweep.py", "tune_family_rates.py"],
         "api": ["lora.quantize_base", "lora.Linear4bit", "lora.apply_pissa", "lora.create_loraplus_optimizer",
                 "peft_methods.apply_dora", "peft_methods.apply_vera", "classify.lora_family", "classify.rank_sweep",
                 "classify.rate_search"]},
}
