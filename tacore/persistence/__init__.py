"""The state database: events and metric samples (SQLite), owned by the daemon."""
