"""Errors raised for bad user input. Each message names the file, layer or field at fault."""


class NetVladPortError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero, without a traceback."""


class NetFormatError(NetVladPortError, ValueError):
    """A network file or folder is unreadable or does not describe a supported SimpleNN network."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what was kept: still a KeyboardInterrupt to callers; the CLI prints the message as one
    line and exits 130, as a shell does for SIGINT."""

    exit_code = 130
