"""What every layer may use: atomic file replacement (and the run's temporaries and claims), the version."""
