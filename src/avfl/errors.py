"""Errors meant for the user: a wrong config, a dataset folder in the wrong layout, missing
weights, a failed download, an impossible partition. The command line prints them as one
line that names the file or key and the fix; any other exception is a bug and keeps its
traceback in the rule's log."""


class UserError(Exception):
    """Something the user can fix; the message says what and how."""
