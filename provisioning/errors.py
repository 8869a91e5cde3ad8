"""The provisioning error tree: every step's errors derive from these, so the CLI maps them to exit codes in one
place (provisioning/cli.py) and no step can end in a traceback.

    ProvisionError          the step could not run or failed; the message says why and what to do   -> exit 1
    ProvisionInputError     bad input; the message names the flag or file                            -> exit 2
    PortBusyError           the serial device is held by the agent or another tool                   -> exit 5
"""

from __future__ import annotations

__all__ = ["PortBusyError", "ProvisionError", "ProvisionInputError"]


class ProvisionError(Exception):
    """A provisioning step failed; the message says what and what to check."""


class ProvisionInputError(ProvisionError):
    """Bad input; the message names the flag or file."""


class PortBusyError(ProvisionError):
    """The serial device is locked by another process (normally the agent)."""
