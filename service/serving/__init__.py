"""The request path and the service lifecycle: scoring core, admission, deadlines, start-up, watchdog."""
