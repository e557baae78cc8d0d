"""Exit statuses of the ``vaereg`` command (docs/json.md lists them)."""

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    #: some input could not be handled (a file unreadable, a hash not found); the rest was
    FAILED = 1
    #: the command line, the configuration or vaereg's state is wrong: one line says what to fix
    USAGE = 2
    #: a bug in vaereg or a plugin: one line, the traceback with --debug
    INTERNAL = 3
    INTERRUPTED = 130
