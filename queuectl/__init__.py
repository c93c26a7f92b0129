"""queuectl: a background job queue for shell commands, with retries, backoff and a DLQ."""
__version__ = "0.1.0"
