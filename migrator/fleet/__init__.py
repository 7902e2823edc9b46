"""Fleet operations: batches of migrations (a host's evacuation, a bulk move)
that run through the same queue and limits as single migrations."""
