"""Stage 3, the reference final stage: responders, senders, the fenced unlock."""
