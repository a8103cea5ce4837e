"""Model sources: the built-in miniature models and the resolution of a MODEL argument."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Keep diffusers/transformers to errors: their load-time chatter is not ours to show."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
