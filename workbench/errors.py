"""Errors raised on bad programs and bad data; each message names the relation, key or operator."""


class RelationError(ValueError):
    """Bad relation data: missing or non-integer key columns, duplicate keys, ragged values."""


class PlanError(ValueError):
    """A program that cannot be built: unknown keys, name clashes, mismatched dtypes."""


class KernelError(TypeError):
    """A kernel that does not trace, returns a non-floating or non-array value."""
