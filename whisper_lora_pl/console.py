"""A readable console: silence what libraries say that a user can do nothing about.

What our code caused is fixed where it is caused (a generation config that does not clash with the model's, an
attention mask for generate, a serializable checkpoint plugin, TensorBoard installed). What remains comes from
inside the libraries and is filtered here, each with why; the entry points call :func:`quiet_libraries` first.
"""

from __future__ import annotations

import logging
import warnings

#: (module that logs it, start of the message): notices from inside libraries, not about the user's run
_LOGGED = [
    # Whisper's generate passes suppress_tokens beside its own generation config (transformers PR #48108)
    ("transformers.generation.utils", "Passing `generation_config` together with generation-related arguments"),
    # transformers' dequantize() says which type it dequantized to, even when asked for that type (export, and
    # evaluate_merged at the start of every evaluation pass)
    ("transformers.integrations.bitsandbytes", "The modules are dequantized in"),
    # bitsandbytes looks for an optional faster CPU 4-bit kernel package at import and says it is absent
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
    # Lightning advertises its cloud services when no LitLogger / litmodels is installed (rank_zero_info logs
    # through whichever of these two modules was imported last)
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip"),
    ("lightning.fabric.utilities.rank_zero", "💡 Tip"),
]

#: (category, start of the message): deprecations raised inside libraries by their own calls
_WARNED = [
    # peft reads model.is_gradient_checkpointing, which transformers 5 deprecates (peft 0.21)
    (FutureWarning, "`is_gradient_checkpointing` is deprecated"),
    # torchdata's StatefulDataLoader calls torch.set_vital, which torch deprecates
    (UserWarning, "'set_vital' is deprecated"),
    # Lightning's pytree helper uses a torch API that torch deprecates
    (Warning, "`isinstance(treespec, LeafSpec)` is deprecated"),
]


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_libraries() -> None:
    """Install the filters above (idempotent): loggers get them even before their module is imported."""
    for name, prefix in _LOGGED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))
    for category, prefix in _WARNED:
        warnings.filterwarnings("ignore", message=_escape(prefix), category=category)


def _escape(prefix: str) -> str:
    import re

    return re.escape(prefix)
