"""The hook engine: the adapters file, endpoint matching, which hooks a request gets, the adapter
wire format (protocol v1, shared with the SDK), the client that calls adapters, and the
configuration in force with its hot reload."""
