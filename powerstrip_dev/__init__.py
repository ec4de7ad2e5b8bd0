"""Development tooling, outside the runtime package ``powerstrip``: the throwaway Docker Engine,
starting services and waiting for them, the ``make run`` rig and the demo. Importing the proxy
never imports this package (it installs packages and starts daemons)."""
