"""Exceptions the whole system shares; the CLI prints them as one line, without a traceback."""


class PixdexError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ModelMismatchError(PixdexError):
    """A store built with one model was asked to work with another."""
