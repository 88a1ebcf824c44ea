"""The one-machine engine: HTTP server, queue workers, command line."""
