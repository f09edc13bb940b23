"""The control plane: one JSON envelope over a ZeroMQ socket, and a table of small commands."""
