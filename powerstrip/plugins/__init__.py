"""Docker's plugin protocols: what dockerd sends a plugin and what a plugin answers (``wire``),
and how dockerd finds plugins (``discovery``). Pure code, shared by the SDK (which serves an
adapter as a Docker plugin) and the proxy (which calls a Docker plugin as an adapter)."""
