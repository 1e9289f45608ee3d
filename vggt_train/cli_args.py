"""Command-line value parsers shared by the subcommands; a bad value is a one-line CLIError naming the flag."""

from __future__ import annotations

from vggt_train.errors import CLIError


def parse_size(text: str, flag: str = "--size", example: str = "96x128", minimum: int = 1, multiple_of: int = 1) -> tuple[int, int]:
    """'HxW' -> (H, W), each >= `minimum` and a multiple of `multiple_of`."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise CLIError(f"{flag} must look like HxW (e.g. {example}), got {text!r}") from None
    if h < minimum or w < minimum:
        raise CLIError(f"{flag} must be at least {minimum}x{minimum}, got {text!r}")
    if h % multiple_of or w % multiple_of:
        raise CLIError(f"{flag} {text}: height and width must be multiples of {multiple_of}")
    return h, w
