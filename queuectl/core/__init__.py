"""The queue's core: jobs, the manager, workers and storage; nothing here knows about Click."""
