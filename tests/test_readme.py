"""The README's Python blocks run as written, in order, in one namespace: on the shipped
models, and for the checkpoint block on a tiny random GPT-NeoX folder saved under the name
the README gives it (`pythia-70m/`: nothing is downloaded)."""

import re
from pathlib import Path

from hf_models import hf_model, save_folder, tiny_tokenizer

README = Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) == 3, "a README Python block was added or removed: run it here too"
    monkeypatch.chdir(tmp_path)
    save_folder(hf_model("gpt_neox"), tmp_path / "pythia-70m", tiny_tokenizer())
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    assert namespace["pe"].max_abs_error() < 1e-4  # the README's own claim, checked again
