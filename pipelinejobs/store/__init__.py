"""Storage: the contract (``base.JobStore``) and its two implementations, MongoDB and the embedded SQLite
store, opened from settings by ``factory``; ``registry`` keeps serve's Abaco records beside the jobs."""
