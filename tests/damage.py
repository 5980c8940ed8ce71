"""Damage to a file of a folder we wrote, as a failed copy, a full disk or a bad sector leaves it."""

import os

from huatuo_o1 import manifests


def truncate(path):
    """The file cut to half its size (a copy or a write that stopped)."""
    size = os.path.getsize(path)
    os.truncate(path, size // 2)
    return f"({size // 2} bytes, the manifest says {size})"


def remove(path):
    os.remove(path)
    return "(missing)"


def flip_byte(path):
    """One bit flipped in the middle of the file, its size unchanged."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    return "(its sha256 differs)"


DAMAGES = {"truncated": truncate, "missing": remove, "flipped": flip_byte}


def damage(path, how):
    """Damage the file `how` (a key of DAMAGES); returns how the line naming it describes the damage."""
    return DAMAGES[how](path)


def seal(folder, run_parts=(), removable=()):
    """A manifest for a folder as our writers leave it (for a folder a test builds by hand)."""
    manifests.write(folder, manifests.describe(folder, manifests.listing(folder), run_parts), removable)
