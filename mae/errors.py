"""Errors meant for the user: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input (key, file or value); the message names it in one line."""
