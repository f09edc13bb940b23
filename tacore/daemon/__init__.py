"""The daemon: the one place that wires supervision, brokering and control into one loop."""
