"""The one exception type for mistakes a user can fix (bad config, bad data, bad paths)."""


class UserError(Exception):
    """A problem in the user's input. The message names the culprit and says how to fix it.

    Entry points catch it, print the message alone (no traceback) and exit with status 2.
    """
