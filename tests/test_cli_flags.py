"""qkov.cli.flags: flags made from a config dataclass's fields, defaults only there."""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass

import pytest

from qkov.cli import HelpFormatter, build_parser
from qkov.cli.flags import add_dataclass_flags, dataclass_values
from qkov.cli.train import MODEL_NOT_FLAGS
from qkov.config import ModelConfig
from qkov.train import TrainConfig


@dataclass(frozen=True)
class Toy:
    batch_size: int = 8
    rate: float = 0.5
    name: str = "x"
    width: int | None = None


def test_flags_from_fields_with_type_default_and_help():
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)  # the CLI's: shows defaults
    add_dataclass_flags(p, Toy, help={"rate": "how fast", "width": "(default: all)"})
    assert Toy(**dataclass_values(p.parse_args([]), Toy)) == Toy()
    args = p.parse_args(["--batch-size", "3", "--rate", "0.25", "--width", "7"])
    assert dataclass_values(args, Toy) == {"batch_size": 3, "rate": 0.25, "name": "x", "width": 7}
    text = p.format_help()
    assert "how fast (default: 0.5)" in text and "(default: all)" in text
    with pytest.raises(SystemExit):
        p.parse_args(["--batch-size", "many"])


def train_help() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return " ".join(sub.choices["train"].format_help().split())


def test_train_help_shows_every_default_of_the_dataclasses():
    text = train_help()
    for cls, skip in ((ModelConfig, {"seed", "d_head", "pos_init_std"}), (TrainConfig, set())):
        for f in dataclasses.fields(cls):
            if f.name in skip or f.default is None or isinstance(f.default, bool):
                continue  # a switch (--bias) is off unless given
            shown = repr(f.default) if isinstance(f.default, str) else f.default
            assert f"(default: {shown}" in text, (cls.__name__, f.name)
    assert "--lr LR peak learning rate of AdamW (default: 0.003)" in text
    assert "(default: d_model / n_heads)" in text
    assert re.search(r"--bias give the model biases", text)
    assert re.search(r"--no-progress print no progress", text)


def test_train_flag_defaults_are_the_dataclass_defaults():
    args = build_parser().parse_args(["train", "--out", "x"])
    assert ModelConfig(**dataclass_values(args, ModelConfig, skip=MODEL_NOT_FLAGS)) == ModelConfig()
    values = dataclass_values(args, TrainConfig, skip=("steps", "init_from"))
    assert TrainConfig(**values) == TrainConfig()
    assert args.steps is None  # not given: the run's own schedule on --resume
    assert args.d_vocab == 4096  # --vocab-size


def test_given_flags_lists_what_the_command_line_gave_even_at_its_default():
    from qkov.cli.flags import given_flags

    args = build_parser().parse_args(
        ["train", "--out", "x", "--d-model", "128", "--bias", "--lr", "1e-3", "--vocab-size", "9"]
    )
    assert given_flags(args, ModelConfig) == {
        "d_model": "--d-model",
        "bias": "--bias",
        "d_vocab": "--vocab-size",
    }
    assert given_flags(args, TrainConfig) == {"lr": "--lr"}
    assert given_flags(build_parser().parse_args(["train", "--out", "x"])) == {}
