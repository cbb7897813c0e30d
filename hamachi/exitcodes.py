"""Process exit codes, named in one place (STYLE.md: "Exit codes are named in one place")."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    BAD_CONFIG = 3
    NOT_RUNNING = 4
    NO_PRIVILEGE = 5
