"""How dockerd finds a plugin by name, for Powerstrip to find it the same way.

dockerd looks for ``NAME.sock`` (or ``NAME/NAME.sock``) in ``/run/docker/plugins``, then for
``NAME.spec`` (a file holding an address) or ``NAME.json`` (``{"Name", "Addr", "TLSConfig"}``),
and their ``NAME/`` forms, in ``/etc/docker/plugins`` and ``/usr/lib/docker/plugins``; the first
found wins (``pkg/plugins/discovery.go``). ``POWERSTRIP_PLUGIN_PATH`` (directories separated by
``:``) replaces both lists, socket files and spec files alike being looked for in each, in order.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

SOCKET_DIRS = ("/run/docker/plugins",)
SPEC_DIRS = ("/etc/docker/plugins", "/usr/lib/docker/plugins")


class PluginNotFound(LookupError):
    """No plugin of that name where dockerd would look; the message lists where."""


def search_path() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The directories searched for sockets and for spec files."""
    override = os.environ.get("POWERSTRIP_PLUGIN_PATH")
    if override:
        dirs = tuple(d for d in override.split(":") if d)
        return dirs, dirs
    return SOCKET_DIRS, SPEC_DIRS


def _candidates(base: str, name: str, ext: str) -> list[Path]:
    return [Path(base) / f"{name}{ext}", Path(base) / name / f"{name}{ext}"]


def find_plugin(name: str, socket_dirs: Sequence[str] | None = None,
                spec_dirs: Sequence[str] | None = None) -> str:
    """The address of plugin ``name``: ``unix:///path`` for a socket, else what its spec
    file says (``unix://...``, ``tcp://HOST:PORT``, ``http(s)://...``). PluginNotFound when
    there is none, ValueError for a spec file that says nothing usable."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a plugin name")
    default_sockets, default_specs = search_path()
    socket_dirs = default_sockets if socket_dirs is None else socket_dirs
    spec_dirs = default_specs if spec_dirs is None else spec_dirs
    looked: list[str] = []
    for base in socket_dirs:
        for path in _candidates(base, name, ".sock"):
            looked.append(str(path))
            try:
                if stat.S_ISSOCK(path.stat().st_mode):
                    return f"unix://{path}"
            except OSError:
                continue
    for base in spec_dirs:
        for ext in (".spec", ".json"):
            for path in _candidates(base, name, ext):
                looked.append(str(path))
                try:
                    text = path.read_text()
                except OSError:
                    continue
                return _address(path, text, ext)
    raise PluginNotFound(f"no plugin {name!r}: looked for {', '.join(looked)}")


def _address(path: Path, text: str, ext: str) -> str:
    if ext == ".json":
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from None
        address = document.get("Addr") if isinstance(document, dict) else None
        if not isinstance(address, str):
            raise ValueError(f"{path}: has no \"Addr\"")
        if document.get("TLSConfig"):
            raise ValueError(f"{path}: TLSConfig is not supported; give the plugin a unix "
                             "socket or an http:// address")
    else:
        address = text.strip()
    if "://" not in address:
        raise ValueError(f"{path}: {address!r} is not an address with a scheme")
    return address
