"""One error type for bad input, so hosts can show the message as it is."""


class VP2PInputError(ValueError):
    """Bad input: the message names the input and what was expected."""
