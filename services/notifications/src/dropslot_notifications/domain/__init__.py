"""The rules of notifications, with no I/O: templates and their channels, who gets what on
which channel, how long to wait before retrying, which failures are final."""
