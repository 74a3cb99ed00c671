"""Storage backends. Each implements :class:`pipelinejobs.store.base.JobStore`."""
