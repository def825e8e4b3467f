"""What every experiment run shares: result statistics (and, as it grows, the run harness)."""
