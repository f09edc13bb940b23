"""Logs (and, later, metrics): how the daemon tells an operator what happened."""
