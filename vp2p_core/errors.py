"""One error type for bad input, so hosts can show the message as it is."""


class VP2PInputError(ValueError):
    """Bad input: the message names the input and what was expected."""


def with_article(noun: str) -> str:
    """'an inversion', 'a delta': for messages built from a kind name."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"
