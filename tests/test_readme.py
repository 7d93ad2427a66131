"""Every command in the README's and docs' code blocks still parses: a renamed flag or config key breaks the build,
not the user. ``train.py`` commands run with ``--print_config`` (which checks every key against the code and exits
before any work); module and script commands must only use flags their ``--help`` lists."""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from whisper_lora_pl.training.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
#: placeholders the docs use for "your config" and "your checkpoint"
PLACEHOLDERS = {"X": "configs/demo.yaml", "Y": "runs/demo/checkpoints/last.ckpt"}


def commands(page: Path) -> list[str]:
    """The shell commands of a page's ``bash`` blocks (continuation lines joined, comments dropped), and the
    module and script commands quoted inline in its text."""
    text = page.read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            found.extend(part.strip() for part in line.split("&&") if part.strip())
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += re.findall(r"`(python (?:-m whisper_lora_pl\.\w+|benchmarks/\w+\.py|scripts/\w+\.py)[^`]*)`", prose)
    return found


def ours(command: str) -> list[str] | None:
    """The argv from ``train.py``, ``-m whisper_lora_pl.*``, ``benchmarks/*.py`` or ``scripts/*.py`` on, else None
    (pip, ruff, pytest, tensorboard)."""
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word.endswith("train.py") or re.fullmatch(r"(benchmarks|scripts)/\w+\.py", word):
            return words[i:]
        if word == "-m" and words[i + 1].startswith("whisper_lora_pl."):
            return words[i + 1 :]
    return None


ALL = [(page.name, command) for page in PAGES for command in commands(page) if ours(command)]


def test_the_pages_hold_our_commands():
    names = {argv[0] for _, command in ALL if (argv := ours(command))}
    assert {"train.py", "whisper_lora_pl.export", "whisper_lora_pl.transcribe", "whisper_lora_pl.app"} <= names
    assert sum(ours(c)[0] == "train.py" for _, c in ALL if ours(c)) >= 8


def _help(argv0: str) -> str:
    out = io.StringIO()
    argv = [argv0, "--help"]
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        if argv0.startswith("whisper_lora_pl."):
            old, sys.argv = sys.argv, argv
            # an old path (whisper_lora_pl.app) already imported in this process is its new module: run that, as
            # `python -m` does through the alias in a fresh process
            argv0 = getattr(sys.modules.get(argv0), "__name__", argv0)
            try:
                runpy.run_module(argv0, run_name="__main__", alter_sys=True)
            finally:
                sys.argv = old
        else:  # as `python benchmarks/x.py` runs it: its folder first on the path
            (old, sys.argv), old_path = (sys.argv, argv), list(sys.path)
            sys.path.insert(0, str((REPO / argv0).parent))
            try:
                runpy.run_path(str(REPO / argv0), run_name="__main__")
            finally:
                sys.argv, sys.path[:] = old, old_path
    assert stop.value.code in (0, None), out.getvalue()
    return out.getvalue()


@pytest.mark.parametrize(("page", "command"), ALL, ids=[f"{p}:{c[:60]}" for p, c in ALL])
def test_a_documented_command_parses(page, command, monkeypatch, capsys):
    argv = [PLACEHOLDERS.get(word, word) for word in ours(command)]
    if argv[0] == "train.py":
        monkeypatch.chdir(REPO)
        with pytest.raises(SystemExit) as stop:
            cli_main([*argv[1:], "--print_config"])
        assert stop.value.code in (0, None), capsys.readouterr().err
        return
    listed = _help(argv[0])
    keys = []  # --model.x=... a script hands on to train.py: checked as train.py checks them
    for i, word in enumerate(argv[1:], 1):
        flag = word.split("=")[0]
        if not flag.startswith("--"):
            continue
        if "." in flag:
            keys += [word] if "=" in word else argv[i : i + 2]
            continue
        assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", listed), f"{page}: {flag} is not in {argv[0]} --help"
    if keys:
        monkeypatch.chdir(REPO)
        with pytest.raises(SystemExit) as stop:
            cli_main(["fit", "--config", "configs/demo.yaml", *keys, "--print_config"])
        assert stop.value.code in (0, None), capsys.readouterr().err
