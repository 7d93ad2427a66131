"""The package's folders show its parts, and imports run one way (docs/design.md): data, then decoding, then the
model, then training and what users take home, neither of which imports the other."""

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "whisper_lora_pl"
#: each part may import the parts ranked below it, never one of its rank or above
RANK = {"data": 0, "decoding": 1, "model": 2, "training": 3, "takehome": 3}
#: top-level modules every part may use: the console's filters, where real weights come from
SHARED = {"console", "convert"}
#: old paths the README's commands and shipped configs name, kept as aliases of the new modules
ALIASES = {
    "sources": "data.sources",
    "cli": "training.cli",
    "batch_probe": "training.batch_probe",
    "export": "takehome.export",
    "transcribe": "takehome.transcribe",
    "app": "takehome.app",
}


def imported(path: Path) -> set[str]:
    """Every ``whisper_lora_pl`` module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("whisper_lora_pl.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("whisper_lora_pl"):
            top = node.module == "whisper_lora_pl"  # from whisper_lora_pl import X
            found |= {f"{node.module}.{alias.name}" if top else node.module for alias in node.names}
    return found


def test_every_module_lives_in_a_part():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == SHARED | ALIASES.keys()
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} == RANK.keys()


def test_imports_run_one_way():
    wrong = []
    for path in sorted(PACKAGE.glob("*/*.py")):
        part = path.parent.name
        for target in imported(path):
            other = target.split(".")[1]
            if other == part or other in SHARED:
                continue
            if other not in RANK or RANK[other] >= RANK[part]:
                wrong.append(f"{path.relative_to(REPO)} imports {target}")
    for name in SHARED:
        wrong += [f"{name}.py imports {t}" for t in imported(PACKAGE / f"{name}.py") if t.split(".")[1] != "data"]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("old", "new"), sorted(ALIASES.items()))
def test_the_old_paths_are_the_new_modules(old, new):
    assert importlib.import_module(f"whisper_lora_pl.{old}") is importlib.import_module(f"whisper_lora_pl.{new}")


def test_a_dataloader_worker_imports_neither_lightning_nor_the_model():
    code = "import sys, whisper_lora_pl.data.dataset; print(sorted({'lightning', 'peft'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_a_config_that_names_the_old_source_path_still_runs(tiny_model, cv_release, tmp_path):
    """Users' configs name ``whisper_lora_pl.sources.CommonVoiceFolder`` (the shipped ones did until the move)."""
    from tests.conftest import tiny_args
    from whisper_lora_pl.data.sources import CommonVoiceFolder
    from whisper_lora_pl.training.cli import main

    old = {"class_path": "whisper_lora_pl.sources.CommonVoiceFolder", "init_args": {"root": str(cv_release)}}
    cli = main([*tiny_args(tiny_model, cv_release, tmp_path), f"--data.source={json.dumps(old)}"], run=False)
    assert type(cli.datamodule.source) is CommonVoiceFolder and cli.datamodule.source.root == cv_release
