"""The adapter author's kit: the SDK (public as ``powerstrip.adapter``), the test kit (public as
``powerstrip.testing``), JSON read the way the daemon reads it, YAML settings files read strictly
(the adapters file is read with it too), and a small Engine API client."""
