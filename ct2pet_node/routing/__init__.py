"""Which series qualify and when a series is complete; pure deciding code, no I/O."""
