"""JSON read as the Docker daemon reads it, for adapter authors: ``powerstrip.core.gojson``.

The proxy itself shows hooks every JSON body in the spelling the daemon decodes (one key per
field, duplicates resolved), so it needs the same rules below the kit; they live in the core and
this name stays where adapters already import it from.
"""

from powerstrip.core.gojson import (
    ANY,
    BOOL,
    STRING,
    STRSLICE,
    GoJSONError,
    GoSlice,
    Map,
    Ptr,
    Slice,
    Struct,
    go_decode,
    go_fold_equal,
    go_keys,
    go_value,
)

__all__ = [
    "ANY", "BOOL", "STRING", "STRSLICE", "GoJSONError", "GoSlice", "Map", "Ptr", "Slice",
    "Struct", "go_decode", "go_fold_equal", "go_keys", "go_value",
]
