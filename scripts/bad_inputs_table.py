"""Print the bad-input table: each bad input of issue 7 and the one error line it gets.

Runs the cases of tests/test_bad_inputs.py (the same code the tests check) in a temporary
folder and prints a markdown table. Usage: python scripts/bad_inputs_table.py"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="qkov-bad-inputs-") as tmp:
        tmp = Path(tmp)
        os.environ["QKOV_CACHE"] = str(tmp / "cache")  # never touch the user's cache
        spec = importlib.util.spec_from_file_location(
            "bad_inputs", ROOT / "tests" / "test_bad_inputs.py"
        )
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bad_inputs"] = mod  # dataclasses look their module up here
        spec.loader.exec_module(mod)
        import torch

        torch.set_num_threads(1)
        corpus = mod.write_corpus(tmp / "corpus")
        with contextlib.redirect_stdout(io.StringIO()):
            run = mod.train_tiny_run(corpus, tmp / "run")
        print("| bad input | via | exit | the one error line |")
        print("| --- | --- | --- | --- |")
        for i, (what, case, _) in enumerate(mod.CASES):
            env = mod.make_env(corpus, run, tmp / f"case{i}")
            code, err = case(env)
            line = err.strip().replace(str(tmp), "<tmp>").replace("|", "\\|")
            via, exit_ = ("library", "raises") if line.startswith("QkovError") else ("CLI", code)
            print(f"| {what} | {via} | {exit_} | `` {line} `` |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
