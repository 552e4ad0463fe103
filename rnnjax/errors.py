"""The error every layer of rnnjax may raise for a bad config value (no imports: the lowest
module)."""


class ConfigError(ValueError):
    """A config field holds a value that is not allowed; the message names the field and the fix."""
