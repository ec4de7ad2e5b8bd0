"""The adapter author's kit: the SDK (public as ``powerstrip.adapter``), the test kit (public as
``powerstrip.testing``), JSON read the way the daemon reads it, and a small Engine API client."""
