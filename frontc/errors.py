"""Exception types. Each carries the process exit code the CLI returns for it.

Exit codes (documented in README.md):
  0  done
  1  pipeline failure: the inputs were fine but frontc could not produce a valid output
     (validation failed, coverage below --min-coverage, an internal pass error)
  2  bad usage or bad input: unreadable/invalid files, models that share no structure
"""
from __future__ import annotations


class FrontcError(Exception):
    """Base class: a failure with a message meant for the user (no traceback)."""

    exit_code = 1


class InputError(FrontcError):
    """A bad input file or a bad option: fix the input, then run again."""

    exit_code = 2


class MatchError(InputError):
    """The source and the target share no structure frontc can align."""


class PipelineError(FrontcError):
    """The inputs were accepted but a pass could not produce a valid result."""

    exit_code = 1
