"""Exit statuses of the ``vaereg`` command."""

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    #: some input could not be handled (a file unreadable, a hash not found); the rest was
    FAILED = 1
    #: the command line or the configuration is wrong
    USAGE = 2
    INTERRUPTED = 130
