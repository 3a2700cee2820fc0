"""The one exception type the CLI turns into a single 'error: ...' line and a non-zero exit."""


class RewardiffError(Exception):
    """Bad input or an impossible request; the message names the problem for a person."""
