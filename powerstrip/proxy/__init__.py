"""The Twisted layer: client and daemon connections driving the exchange machine, flow control,
the fast path for plain sockets, the busy-polling reactor, listener addresses and TLS."""
