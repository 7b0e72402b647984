"""Exceptions shared by both front ends, each mapped to a documented exit code."""

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_INPUT = 2


class QwamosError(Exception):
    """Base class: str(exc) is the one-line reason shown to the user."""

    exit_code = EXIT_INPUT


class InputError(QwamosError):
    """The domain XML is unreadable, hostile, malformed or not a <domain>."""


class NotADomain(InputError):
    """Well-formed XML whose root is not <domain> (skipped when scanning folders)."""


class PolicyError(QwamosError):
    """The policy file is missing a required part, unparseable or invalid."""


class StageError(QwamosError):
    """A stage action (firewall, keys, ...) failed; blocks where the stage can block."""
