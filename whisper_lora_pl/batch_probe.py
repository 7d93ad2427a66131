"""The old path of ``whisper_lora_pl.training.batch_probe``, kept for the commands and configs that name it."""

import sys

if __name__ == "__main__":  # python -m whisper_lora_pl.batch_probe: run the module as its own __main__
    import runpy

    runpy.run_module("whisper_lora_pl.training.batch_probe", run_name="__main__", alter_sys=True)
else:
    import importlib

    sys.modules[__name__] = importlib.import_module("whisper_lora_pl.training.batch_probe")
