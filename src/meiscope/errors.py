"""One base class for the errors a user can fix; the CLI prints them as a single line."""


class MeiscopeError(Exception):
    """Bad input or an unreachable resource, described in one line that names the file or key."""
