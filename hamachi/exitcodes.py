"""Process exit codes, named in one place (STYLE.md: "Exit codes are named in one place").

    0 OK            done (also: a join that now waits for the owner's approval)
    1 FAILURE       the daemon or the server refused, or something failed
    2 USAGE         a bad command line
    3 BAD_CONFIG    a config problem (one line per problem)
    4 NOT_RUNNING   no daemon is listening on the local API socket
    5 NO_PRIVILEGE  needs root / CAP_NET_ADMIN, or access to the API socket
    6 IN_USE        a port is taken, or another daemon already runs with this config
"""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    BAD_CONFIG = 3
    NOT_RUNNING = 4
    NO_PRIVILEGE = 5
    IN_USE = 6


class StartupError(Exception):
    """A daemon cannot start for a reason the user can fix; one line, with its exit code."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILURE):
        super().__init__(message)
        self.code = code
