"""One run's life outside training: its directory and lock, a clean stop, the summary, notifications, tracking,
communication counts and secrets kept out of logs."""
