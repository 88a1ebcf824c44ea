"""Stage 1, the webhook handler: parsing, signature, validation, routing, responses."""
