"""Class labels of the ICBHI 2017 cycle annotation scheme."""

CLASSES: tuple[str, ...] = ("normal", "crackle", "wheeze", "both")
BINARY_CLASSES: tuple[str, ...] = ("normal", "abnormal")


def label_from_flags(crackles: int, wheezes: int) -> int:
    """Return the 4-class index for an ICBHI cycle's crackle/wheeze flags (0/1 each)."""
    return int(bool(crackles)) + 2 * int(bool(wheezes))


def to_binary(label: int) -> int:
    """Map a 4-class index to normal (0) / abnormal (1)."""
    return 0 if label == 0 else 1
