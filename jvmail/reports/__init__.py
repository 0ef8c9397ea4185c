"""Weekly reciprocity statements and the coordinator's summary."""
